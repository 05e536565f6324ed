package shard

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestContentAndIndexSpan(t *testing.T) {
	cs, ce := ContentSpan("posts")
	if string(cs) != "c\x05posts" || string(ce) != "c\x05postt" {
		t.Fatalf("ContentSpan = %q, %q", cs, ce)
	}
	is, ie := IndexSpan("timeline")
	if string(is) != "i\x08timeline" || string(ie) != "i\x08timelinf" {
		t.Fatalf("IndexSpan = %q, %q", is, ie)
	}
	in := func(k, s, e []byte) bool { return bytes.Compare(k, s) >= 0 && bytes.Compare(k, e) < 0 }
	for _, k := range [][]byte{{0}, []byte("a"), bytes.Repeat([]byte{0xff}, 20)} {
		if ck := contentKey(7, "posts", k)[shardPrefixLen:]; !in(ck, cs, ce) {
			t.Errorf("content key %q outside ContentSpan", ck)
		}
		if ck := contentKey(7, "post", k)[shardPrefixLen:]; in(ck, cs, ce) {
			t.Errorf("key %q of another table inside ContentSpan", ck)
		}
	}
	for _, k := range [][]byte{
		indexKey(7, "timeline", 0, 0, 0)[shardPrefixLen:],
		indexKey(7, "timeline", 1<<32-1, 1<<64-1, 1<<64-1)[shardPrefixLen:],
	} {
		if !in(k, is, ie) {
			t.Errorf("index key %x outside IndexSpan", k)
		}
	}

	// Digesting the spans splits the shard's data.
	s := newTestStore(t, nil)
	mustApply(t, s, digestFixture()...)
	cs, ce = ContentSpan(tContent)
	is, ie = IndexSpan(tIndex)
	if d := mustDigestData(t, s, shA, cs, ce, nil); d.Records != 5 {
		t.Errorf("content span: %v", d)
	}
	if d := mustDigestData(t, s, shA, is, ie, nil); d.Records != 4 {
		t.Errorf("index span: %v", d)
	}
}

// checkSplit checks that parts cover [start, end) exactly, contiguously,
// with non-empty parts, at most n of them.
func checkSplit(t *testing.T, start, end []byte, n int, parts [][2][]byte) {
	t.Helper()
	if len(parts) == 0 || len(parts) > max(n, 1) {
		t.Fatalf("SplitSpan(%x, %x, %d): %d parts", start, end, n, len(parts))
	}
	if !bytes.Equal(parts[0][0], start) || (parts[0][0] == nil) != (start == nil) {
		t.Fatalf("first part starts at %x, not %x", parts[0][0], start)
	}
	if last := parts[len(parts)-1][1]; !bytes.Equal(last, end) || (last == nil) != (end == nil) {
		t.Fatalf("last part ends at %x, not %x", last, end)
	}
	for i, p := range parts {
		if i > 0 && !bytes.Equal(p[0], parts[i-1][1]) {
			t.Fatalf("part %d starts at %x, part %d ends at %x", i, p[0], i-1, parts[i-1][1])
		}
		if len(parts) > 1 && p[1] != nil && bytes.Compare(p[0], p[1]) >= 0 {
			t.Fatalf("part %d is empty: [%x, %x)", i, p[0], p[1])
		}
	}
}

func TestSplitSpan(t *testing.T) {
	cs, ce := ContentSpan("posts")
	b := func(s string, extra ...byte) []byte { return append([]byte(s), extra...) }
	cases := []struct {
		name       string
		start, end []byte
		n          int
		want       [][]byte // boundaries between the parts
	}{
		{"one part", cs, ce, 1, nil},
		{"zero parts is one", cs, ce, 0, nil},
		{"negative parts is one", cs, ce, -3, nil},
		{"two", cs, ce, 2, [][]byte{b("c\x05posts", 0x80)}},
		{"four", cs, ce, 4, [][]byte{b("c\x05posts", 0x40), b("c\x05posts", 0x80), b("c\x05posts", 0xc0)}},
		{"three", cs, ce, 3, [][]byte{b("c\x05posts", 0x55), b("c\x05posts", 0xaa)}},
		{"empty span", cs, cs, 4, nil},
		{"reversed span", ce, cs, 4, nil},
		{"unbounded", nil, nil, 4, [][]byte{{0x40}, {0x80}, {0xc0}}},
		{"unbounded end", []byte{0x80}, nil, 2, [][]byte{{0xc0}}},
		{"unbounded start", nil, []byte{0x80}, 2, [][]byte{{0x40}}},
		{"start a prefix of end", b("ab"), b("ab", 0x10), 2, [][]byte{b("ab", 0x08)}},
		{"adjacent bytes", b("ab", 1), b("ab", 2), 2, [][]byte{b("ab", 1, 0x80)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			parts := SplitSpan(c.start, c.end, c.n)
			checkSplit(t, c.start, c.end, c.n, parts)
			var got [][]byte
			for _, p := range parts[1:] {
				got = append(got, p[0])
			}
			if len(got) != len(c.want) {
				t.Fatalf("boundaries %x, want %x", got, c.want)
			}
			for i := range got {
				if !bytes.Equal(got[i], c.want[i]) {
					t.Fatalf("boundaries %x, want %x", got, c.want)
				}
			}
		})
	}

	// A span of a prefix splits by the next byte up to 256 parts, by the
	// next two up to 65536, into exactly n parts.
	for _, n := range []int{2, 7, 255, 256, 257, 1000, 65536, 1 << 20} {
		parts := SplitSpan(cs, ce, n)
		checkSplit(t, cs, ce, n, parts)
		wantParts, wantLen := min(n, 65536), len(cs)+1
		if n > 256 {
			wantLen++
		}
		if len(parts) != wantParts {
			t.Fatalf("n=%d: %d parts", n, len(parts))
		}
		for _, p := range parts[1:] {
			if len(p[0]) > wantLen || !bytes.HasPrefix(p[0], cs) {
				t.Fatalf("n=%d: boundary %x, want %d bytes with prefix %x", n, p[0], wantLen, cs)
			}
		}
	}
	if parts := SplitSpan(cs, ce, 256); !bytes.Equal(parts[1][0], b("c\x05posts", 1)) || !bytes.Equal(parts[255][0], b("c\x05posts", 0xff)) {
		t.Fatalf("256 parts: %x ... %x", parts[1][0], parts[255][0])
	}
}

// TestSplitSpanRandom splits random spans and checks that they are covered
// exactly and that sub-spans split again.
func TestSplitSpanRandom(t *testing.T) {
	rng := testRand(t)
	randKey := func() []byte {
		k := make([]byte, rng.IntN(12))
		for i := range k {
			// Few distinct bytes, so that bounds share long prefixes.
			k[i] = []byte{0, 1, 0x7f, 0xfe, 0xff}[rng.IntN(5)]
		}
		return k
	}
	for range 3000 {
		start, end := randKey(), randKey()
		switch rng.IntN(6) {
		case 0:
			end = nil
		case 1:
			start = nil
		}
		if end != nil && bytes.Compare(start, end) > 0 {
			start, end = end, start
		}
		n := 1 + rng.IntN(300)
		parts := SplitSpan(start, end, n)
		checkSplit(t, start, end, n, parts)
		p := parts[rng.IntN(len(parts))]
		m := 1 + rng.IntN(20)
		checkSplit(t, p[0], p[1], m, SplitSpan(p[0], p[1], m))
	}
}

// TestSplitSpanDigests digests the sub-spans of a shard's spans: their
// records add up to the span's.
func TestSplitSpanDigests(t *testing.T) {
	rng := testRand(t)
	s := newTestStore(t, nil)
	sp := migrateSpace(rng, shA)
	applyShuffled(t, rng, s, sp.randMutations(rng, 800))
	for _, span := range [][2][]byte{spanOf(ContentSpan(tContent)), spanOf(IndexSpan(tIndex))} {
		whole := mustDigestData(t, s, shA, span[0], span[1], nil)
		for _, n := range []int{1, 3, 16, 300} {
			var total, nonEmpty uint64
			for _, p := range SplitSpan(span[0], span[1], n) {
				d := mustDigestData(t, s, shA, p[0], p[1], nil)
				total += d.Records
				if d.Records > 0 {
					nonEmpty++
				}
			}
			if total != whole.Records {
				t.Fatalf("%s split %d: %d records, whole %d", FormatKey(span[0]), n, total, whole.Records)
			}
			t.Logf("%s split %d ways: %d non-empty parts", FormatKey(span[0]), n, nonEmpty)
		}
	}
}

func spanOf(start, end []byte) [2][]byte { return [2][]byte{start, end} }

func TestFormatKey(t *testing.T) {
	rel := func(k []byte) []byte { return k[shardPrefixLen:] }
	id := idIn(time.May, 3, 0, 0)
	cases := []struct {
		k    []byte
		want string
	}{
		{rel(contentKey(3, "posts", []byte("abc"))), `content posts "abc"`},
		{rel(contentKey(3, "posts", []byte("a\x00\xff"))), `content posts "a\x00\xff"`},
		{rel(indexKey(3, "timeline", month2026(time.May), 42, id)), fmt.Sprintf("index timeline owner=42 id=%d month=2026-05", id)},
		{rel(indexOwnerPrefix(3, "timeline", month2026(time.May), 42)), "index timeline owner=42 month=2026-05"},
		{rel(indexMonthPrefix(3, "timeline", month2026(time.May))), "index timeline month=2026-05"},
		{rel(countKey(3, "timeline", month2026(time.May), 42)), "count timeline owner=42 month=2026-05"},
		{rel(monthKey(3, "timeline", month2026(time.May))), "month timeline 2026-05"},
		{rel(retentionKey(3, "timeline")), "retention timeline"},
		{[]byte{}, `""`},
		{nil, `""`},
		{[]byte("c"), "hex:63"},
		{[]byte("c\x05pos"), "hex:6305706f73"},
		{[]byte("x\x01a"), "hex:780161"},
		{[]byte("i\x03idx\x00\x01"), "hex:6903696478" + "0001"},
		{[]byte("c\x02a\xffk"), "hex:630261ff6b"},
		{[]byte("c\x00k"), "hex:63006b"},
		{[]byte("r\x03idxz"), "hex:7203696478" + "7a"},
	}
	for _, c := range cases {
		if got := FormatKey(c.k); got != c.want {
			t.Errorf("FormatKey(%x) = %s, want %s", c.k, got, c.want)
		}
	}
	if got := FormatKey(func() []byte { s, _ := IndexSpan("timeline"); return s }()); got != "index timeline" {
		t.Errorf("IndexSpan start: %s", got)
	}
	// Junk never panics and is never empty.
	rng := testRand(t)
	for range 20000 {
		k := make([]byte, rng.IntN(40))
		for i := range k {
			k[i] = byte(rng.UintN(256))
		}
		if len(k) > 0 && rng.IntN(2) == 0 {
			k[0] = "cinmr"[rng.IntN(5)]
			if len(k) > 1 {
				k[1] = byte(rng.IntN(len(k)))
			}
		}
		if got := FormatKey(k); got == "" || (!strings.HasPrefix(got, "hex:") && len(k) > 0 && !strings.ContainsAny(got[:1], "cimr")) {
			t.Fatalf("FormatKey(%x) = %q", k, got)
		}
	}
}
