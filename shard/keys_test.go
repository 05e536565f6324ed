package shard

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
)

func TestDecodeKeyRoundTrip(t *testing.T) {
	const month = 2026*12 + 3 // 2026-04
	cases := []struct {
		name string
		key  []byte
		want decodedKey
	}{
		{"content", contentKey(7, "posts", []byte("k\x00\xff")),
			decodedKey{shard: 7, space: spaceContent, table: "posts", key: []byte("k\x00\xff")}},
		{"content empty key", contentKey(1, "t", nil),
			decodedKey{shard: 1, space: spaceContent, table: "t", key: []byte{}}},
		{"content max table", contentKey(0xffffffff, string(bytes.Repeat([]byte("x"), MaxTableNameBytes)), []byte("k")),
			decodedKey{shard: 0xffffffff, space: spaceContent, table: string(bytes.Repeat([]byte("x"), MaxTableNameBytes)), key: []byte("k")}},
		{"index", indexKey(3, "timeline", month, 42, 1<<62+5),
			decodedKey{shard: 3, space: spaceIndex, table: "timeline", month: month, owner: 42, id: 1<<62 + 5}},
		{"index extremes", indexKey(1, "t", 0xffffffff, ^uint64(0), 0),
			decodedKey{shard: 1, space: spaceIndex, table: "t", month: 0xffffffff, owner: ^uint64(0), id: 0}},
		{"count", countKey(9, "tl", month, 1<<40),
			decodedKey{shard: 9, space: spaceCount, table: "tl", month: month, owner: 1 << 40}},
		{"month", monthKey(2, "tl", month),
			decodedKey{shard: 2, space: spaceMonth, table: "tl", month: month}},
		{"retention", retentionKey(5, "tl"),
			decodedKey{shard: 5, space: spaceRetention, table: "tl"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := decodeKey(c.key)
			if err != nil {
				t.Fatalf("decodeKey(%x): %v", c.key, err)
			}
			if got.shard != c.want.shard || got.space != c.want.space || got.table != c.want.table ||
				got.month != c.want.month || got.owner != c.want.owner || got.id != c.want.id {
				t.Fatalf("decodeKey(%x) = %+v, want %+v", c.key, got, c.want)
			}
			if c.want.space == spaceContent {
				if !bytes.Equal(got.key, c.want.key) {
					t.Fatalf("content key = %q, want %q", got.key, c.want.key)
				}
			} else if len(got.key) != 0 {
				t.Fatalf("non-content key decoded with content key %q", got.key)
			}
			start, end := shardSpan(c.want.shard)
			if bytes.Compare(c.key, start) < 0 || (c.want.shard != 0xffffffff && bytes.Compare(c.key, end) >= 0) {
				t.Fatalf("key %x outside its shard span [%x, %x)", c.key, start, end)
			}
		})
	}
}

func TestKeyPrefixes(t *testing.T) {
	const month = 2026*12 + 1
	ik := indexKey(4, "tl", month, 77, 12345)
	for _, p := range [][]byte{
		appendShard(nil, 4),
		tablePrefix(4, spaceIndex, "tl"),
		indexMonthPrefix(4, "tl", month),
		indexOwnerPrefix(4, "tl", month, 77),
	} {
		if !bytes.HasPrefix(ik, p) {
			t.Errorf("index key %x does not start with %x", ik, p)
		}
	}
	ck := countKey(4, "tl", month, 77)
	for _, p := range [][]byte{tablePrefix(4, spaceCount, "tl"), countMonthPrefix(4, "tl", month)} {
		if !bytes.HasPrefix(ck, p) {
			t.Errorf("count key %x does not start with %x", ck, p)
		}
	}
	if mk := monthKey(4, "tl", month); !bytes.HasPrefix(mk, tablePrefix(4, spaceMonth, "tl")) {
		t.Errorf("month key %x does not start with its table prefix", mk)
	}
	// A table's prefix must not cover another table whose name extends it.
	a, ab := tablePrefix(4, spaceContent, "a"), contentKey(4, "ab", nil)
	if bytes.HasPrefix(ab, a) {
		t.Errorf("table prefix of %q %x covers key of table %q %x", "a", a, "ab", ab)
	}
	if k := contentKey(4, "a", []byte("zzz")); bytes.Compare(k, prefixEnd(a)) >= 0 {
		t.Errorf("content key %x not below prefixEnd of its table %x", k, prefixEnd(a))
	}
}

func TestIndexKeyOrderNewestFirst(t *testing.T) {
	const owner = 99
	// Ids in four months, several per month, plus ids in the same millisecond.
	var idList []uint64
	for m := time.January; m <= time.April; m++ {
		for d := 1; d <= 28; d += 9 {
			idList = append(idList, idIn(m, d, 0, 0), idIn(m, d, 0, 1), idIn(m, d, 59, 0))
		}
	}
	type kv struct {
		id  uint64
		key []byte
	}
	var keys []kv
	for _, id := range idList {
		keys = append(keys, kv{id, indexKey(1, "tl", ids.ID(id).Month(), owner, id)})
	}
	slices.SortFunc(keys, func(a, b kv) int { return bytes.Compare(a.key, b.key) })
	for i := 1; i < len(keys); i++ {
		if keys[i-1].id <= keys[i].id {
			t.Fatalf("ascending key order gives id %d before id %d: want newest first", keys[i-1].id, keys[i].id)
		}
	}

	// Newer months sort first for every month-keyed space, whatever the owner.
	jan, apr := month2026(time.January), month2026(time.April)
	pairs := []struct {
		name         string
		newer, older []byte
	}{
		{"index month prefix", indexMonthPrefix(1, "tl", apr), indexMonthPrefix(1, "tl", jan)},
		{"index key, larger owner in newer month", indexKey(1, "tl", apr, ^uint64(0), 1), indexKey(1, "tl", jan, 1, ^uint64(0)>>1)},
		{"index id within owner month", indexKey(1, "tl", apr, owner, 1000), indexKey(1, "tl", apr, owner, 999)},
		{"count", countKey(1, "tl", apr, 5), countKey(1, "tl", jan, 5)},
		{"month", monthKey(1, "tl", apr), monthKey(1, "tl", jan)},
		{"adjacent months", monthKey(1, "tl", jan+1), monthKey(1, "tl", jan)},
	}
	for _, p := range pairs {
		if bytes.Compare(p.newer, p.older) >= 0 {
			t.Errorf("%s: newer %x does not sort before older %x", p.name, p.newer, p.older)
		}
	}
}

func TestPrefixEnd(t *testing.T) {
	cases := []struct {
		in, want []byte
	}{
		{nil, nil},
		{[]byte{}, nil},
		{[]byte{0xff}, nil},
		{[]byte{0xff, 0xff, 0xff}, nil},
		{[]byte{0}, []byte{1}},
		{[]byte("a"), []byte("b")},
		{[]byte{'a', 0xfe}, []byte{'a', 0xff}},
		{[]byte{'a', 0xff}, []byte("b")},
		{[]byte{'a', 0xff, 0xff}, []byte("b")},
		{[]byte{0, 0, 0, 1, 'c', 1, 't'}, []byte{0, 0, 0, 1, 'c', 1, 'u'}},
		{[]byte{0, 0, 0, 0xff}, []byte{0, 0, 1}},
	}
	for _, c := range cases {
		in := slices.Clone(c.in)
		got := prefixEnd(in)
		if !bytes.Equal(got, c.want) || (c.want == nil) != (got == nil) {
			t.Errorf("prefixEnd(%x) = %x, want %x", c.in, got, c.want)
		}
		if !bytes.Equal(in, c.in) {
			t.Errorf("prefixEnd(%x) modified its input to %x", c.in, in)
		}
		if got != nil {
			if bytes.Compare(got, c.in) <= 0 {
				t.Errorf("prefixEnd(%x) = %x is not above the prefix", c.in, got)
			}
			for _, suffix := range [][]byte{{0}, {0xff}, {0xff, 0xff, 0xff, 0xff}} {
				if k := append(slices.Clone(c.in), suffix...); bytes.Compare(k, got) >= 0 {
					t.Errorf("key %x with prefix %x is not below prefixEnd %x", k, c.in, got)
				}
			}
		}
	}
}

func TestDecodeKeyRejects(t *testing.T) {
	bad := map[string][]byte{
		"nil":                    nil,
		"short":                  {0, 0, 0, 1, 'c'},
		"table truncated":        {0, 0, 0, 1, 'c', 5, 'a', 'b'},
		"unknown space":          {0, 0, 0, 1, 'x', 1, 'a'},
		"metadata shard record":  metaKey(metaShard, "s1"),
		"metadata table record":  metaKey(metaTable, "tl"),
		"index short":            indexKey(1, "t", 5, 6, 7)[:len(indexKey(1, "t", 5, 6, 7))-1],
		"index long":             append(indexKey(1, "t", 5, 6, 7), 0),
		"count long":             append(countKey(1, "t", 5, 6), 0),
		"count as index":         append(tablePrefix(1, spaceIndex, "t"), make([]byte, 12)...),
		"month long":             append(monthKey(1, "t", 5), 0),
		"retention with trailer": append(retentionKey(1, "t"), 0, 0, 0, 0),
		"table len 255 short":    append([]byte{0, 0, 0, 1, 'c', 255}, make([]byte, 254)...),
	}
	for name, k := range bad {
		if d, err := decodeKey(k); err == nil {
			t.Errorf("%s: decodeKey(%x) = %+v, want error", name, k, d)
		}
	}
	// Every proper prefix of a fixed-length key is rejected.
	for _, full := range [][]byte{
		indexKey(1, "tl", 2026*12, 42, 1<<40),
		countKey(1, "tl", 2026*12, 42),
		monthKey(1, "tl", 2026*12),
		retentionKey(1, "tl"),
	} {
		for n := 0; n < len(full); n++ {
			if d, err := decodeKey(full[:n]); err == nil {
				t.Errorf("decodeKey(%x), a %d-byte prefix of %x, = %+v, want error", full[:n], n, full, d)
			}
		}
	}
}

// reencode rebuilds a decoded key with its space's constructor.
func reencode(t *testing.T, d decodedKey) []byte {
	switch d.space {
	case spaceContent:
		return contentKey(d.shard, d.table, d.key)
	case spaceIndex:
		return indexKey(d.shard, d.table, d.month, d.owner, d.id)
	case spaceCount:
		return countKey(d.shard, d.table, d.month, d.owner)
	case spaceMonth:
		return monthKey(d.shard, d.table, d.month)
	case spaceRetention:
		return retentionKey(d.shard, d.table)
	}
	t.Fatalf("decodeKey accepted unknown space %q", d.space)
	return nil
}

func FuzzDecodeKey(f *testing.F) {
	f.Add(contentKey(1, "posts", []byte("hello")))
	f.Add(contentKey(0, "", nil))
	f.Add(indexKey(2, "tl", 2026*12+4, 42, 1<<50))
	f.Add(countKey(3, "tl", 2026*12, 7))
	f.Add(monthKey(4, "tl", 2025*12+11))
	f.Add(retentionKey(5, "tl"))
	f.Add(metaKey(metaShard, "s1"))
	f.Add([]byte{0, 0, 0, 1, 'i', 200})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, k []byte) {
		in := slices.Clone(k)
		d, err := decodeKey(k)
		if !bytes.Equal(in, k) {
			t.Fatalf("decodeKey modified its input")
		}
		if err != nil {
			return
		}
		if got := reencode(t, d); !bytes.Equal(got, k) {
			t.Fatalf("decodeKey(%x) = %+v, re-encoded as %x", k, d, got)
		}
		if d.shard != binary.BigEndian.Uint32(k) {
			t.Fatalf("decoded shard %d, key starts with %x", d.shard, k[:4])
		}
	})
}

func FuzzContentKeyRoundTrip(f *testing.F) {
	f.Add(uint32(1), "posts", []byte("k"))
	f.Add(uint32(0), "", []byte{})
	f.Add(uint32(0xffffffff), "a.b-c_d", []byte{0xff, 0, 'i'})
	f.Fuzz(func(t *testing.T, num uint32, table string, key []byte) {
		if len(table) > 255 {
			t.Skip("table name longer than its length byte")
		}
		k := contentKey(num, table, key)
		d, err := decodeKey(k)
		if err != nil {
			t.Fatalf("decodeKey(contentKey(%d, %q, %x)): %v", num, table, key, err)
		}
		if d.shard != num || d.space != spaceContent || d.table != table || !bytes.Equal(d.key, key) ||
			d.month != 0 || d.owner != 0 || d.id != 0 {
			t.Fatalf("contentKey(%d, %q, %x) decoded as %+v", num, table, key, d)
		}
	})
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(Version{HLC: ids.MakeTimestamp(1_700_000_000_000, 3), Site: 2}, false, []byte("value")))
	f.Add(encodeRecord(Version{HLC: 1, Site: 1}, true, nil))
	f.Add(make([]byte, recordHeaderLen-1))
	f.Add(append(make([]byte, 12), 2, 'x'))
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := decodeRecord(b)
		if err != nil {
			if len(b) >= recordHeaderLen && b[12]&^flagTombstone == 0 {
				t.Fatalf("decodeRecord(%x) rejected a well-formed record: %v", b, err)
			}
			return
		}
		if got := encodeRecord(rec.version, rec.tombstone, rec.value); !bytes.Equal(got, b) {
			t.Fatalf("decodeRecord(%x) = %+v, re-encoded as %x", b, rec, got)
		}
	})
}

func TestRecordRoundTrip(t *testing.T) {
	for _, c := range []struct {
		v    Version
		tomb bool
		val  []byte
	}{
		{Version{HLC: ids.MakeTimestamp(1_700_000_000_000, 9), Site: 3}, false, []byte("v")},
		{Version{HLC: ^ids.Timestamp(0), Site: ^uint32(0)}, true, nil},
		{Version{HLC: 1}, false, bytes.Repeat([]byte{0xff}, 300)},
	} {
		enc := encodeRecord(c.v, c.tomb, c.val)
		rec, err := decodeRecord(enc)
		if err != nil {
			t.Fatalf("decodeRecord: %v", err)
		}
		if rec.version != c.v || rec.tombstone != c.tomb || !bytes.Equal(rec.value, c.val) {
			t.Fatalf("round trip of %+v gave %+v", c, rec)
		}
	}
}

func TestWins(t *testing.T) {
	mk := func(v Version, tomb bool, val string) (record, []byte) {
		enc := encodeRecord(v, tomb, []byte(val))
		r, _ := decodeRecord(enc)
		return r, enc
	}
	old, newer := ver(2000, 0, 3), ver(1000, 0, 1)
	cases := []struct {
		name         string
		a, b         Version
		aTomb, bTomb bool
		aVal, bVal   string
		want         bool // a wins over b
	}{
		{"newer hlc", newer, old, false, false, "x", "y", true},
		{"older hlc", old, newer, false, false, "y", "x", false},
		{"newer logical", ver(1000, 2, 1), ver(1000, 1, 3), false, false, "", "", true},
		{"tie broken by site", ver(1000, 0, 2), ver(1000, 0, 1), false, false, "a", "b", true},
		{"tie lost by site", ver(1000, 0, 1), ver(1000, 0, 2), false, false, "b", "a", false},
		{"same version, tombstone beats value", newer, newer, true, false, "", "zzz", true},
		{"same version, larger value", newer, newer, false, false, "b", "a", true},
		{"identical replay", newer, newer, false, false, "a", "a", false},
	}
	for _, c := range cases {
		aRec, aEnc := mk(c.a, c.aTomb, c.aVal)
		bRec, bEnc := mk(c.b, c.bTomb, c.bVal)
		if got := wins(c.a, aEnc, bRec, bEnc); got != c.want {
			t.Errorf("%s: wins(a, b) = %v, want %v", c.name, got, c.want)
		}
		// Antisymmetric: distinct records never both win.
		if c.want && wins(c.b, bEnc, aRec, aEnc) {
			t.Errorf("%s: both records win over each other", c.name)
		}
	}
}
