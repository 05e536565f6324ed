package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2"
)

func TestApplyLWWOrderIndependent(t *testing.T) {
	v1, v2 := ver(2000, 0, 1), ver(1000, 0, 1)
	tieLo, tieHi := ver(500, 7, 1), ver(500, 7, 2) // equal HLC, site breaks the tie
	cases := []struct {
		name    string
		first   Mutation
		second  Mutation
		want    string
		outcome Outcome // of the second mutation
	}{
		{"newer after older", putM(shA, "k", "old", v1), putM(shA, "k", "new", v2), "new", Applied},
		{"older after newer", putM(shA, "k", "new", v2), putM(shA, "k", "old", v1), "new", Superseded},
		{"tie: higher site second", putM(shA, "k", "lo", tieLo), putM(shA, "k", "hi", tieHi), "hi", Applied},
		{"tie: lower site second", putM(shA, "k", "hi", tieHi), putM(shA, "k", "lo", tieLo), "hi", Superseded},
		{"exact replay", putM(shA, "k", "x", v1), putM(shA, "k", "x", v1), "x", Superseded},
		{"same version, larger value second", putM(shA, "k", "a", v1), putM(shA, "k", "b", v1), "b", Applied},
		{"same version, smaller value second", putM(shA, "k", "b", v1), putM(shA, "k", "a", v1), "b", Superseded},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newTestStore(t, nil)
			if out := mustApply(t, s, c.first); out[0] != Applied {
				t.Fatalf("first mutation: %v, want applied", out[0])
			}
			if out := mustApply(t, s, c.second); out[0] != c.outcome {
				t.Fatalf("second mutation: %v, want %v", out[0], c.outcome)
			}
			v, ok := getValue(t, s, shA, "k")
			if !ok || string(v.Value) != c.want {
				t.Fatalf("Get = %q (found %v), want %q", v.Value, ok, c.want)
			}
			wantVer := c.first.Version
			if c.outcome == Applied {
				wantVer = c.second.Version
			}
			if v.Version != wantVer {
				t.Fatalf("Get version = %v, want %v", v.Version, wantVer)
			}
			// The other shard is untouched.
			if _, ok := getValue(t, s, shB, "k"); ok {
				t.Fatalf("write to %s visible in %s", shA, shB)
			}
		})
	}
}

func TestApplyDeleteTombstone(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	mustApply(t, s, putM(shA, "k", "v1", ver(3000, 0, 1)))
	if out := mustApply(t, s, delM(shA, "k", ver(2000, 0, 1))); out[0] != Applied {
		t.Fatalf("delete: %v", out[0])
	}
	if _, err := s.Get(ctx, shA, tContent, []byte("k")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after delete: %v, want ErrNotFound", err)
	}
	// The tombstone is a record: it is in the digest.
	if d := mustDigest(t, s, shA, []byte{spaceContent}, []byte{spaceContent + 1}); d.Records != 1 {
		t.Fatalf("content records after delete = %d, want 1 (the tombstone)", d.Records)
	}
	// A put older than the delete arriving late stays deleted.
	if out := mustApply(t, s, putM(shA, "k", "late", ver(2500, 0, 3))); out[0] != Superseded {
		t.Fatalf("older put after delete: %v, want superseded", out[0])
	}
	if _, ok := getValue(t, s, shA, "k"); ok {
		t.Fatal("older put resurrected a deleted key")
	}
	// A newer put resurrects.
	if out := mustApply(t, s, putM(shA, "k", "v3", ver(1000, 0, 1))); out[0] != Applied {
		t.Fatalf("newer put: %v", out[0])
	}
	if v, ok := getValue(t, s, shA, "k"); !ok || string(v.Value) != "v3" {
		t.Fatalf("Get after re-put = %q, %v", v.Value, ok)
	}
	// Delete of a key never written leaves a tombstone that wins over an
	// older put.
	mustApply(t, s, delM(shA, "never", ver(1000, 0, 1)))
	if out := mustApply(t, s, putM(shA, "never", "x", ver(1500, 0, 1))); out[0] != Superseded {
		t.Fatalf("put older than a blind delete: %v", out[0])
	}
	if _, ok := getValue(t, s, shA, "never"); ok {
		t.Fatal("blind delete did not hold")
	}
}

func TestApplyIndexRemoveTombstone(t *testing.T) {
	s := newTestStore(t, nil)
	id := idIn(time.March, 3, 0, 0)
	mustApply(t, s, appM(shA, 7, id, "p1", ver(3000, 0, 1)))
	mustApply(t, s, remM(shA, 7, id, ver(2000, 0, 1)))
	if n, _ := mustCount(t, s, shA, 7); n != 0 {
		t.Fatalf("count after remove = %d", n)
	}
	if out := mustApply(t, s, appM(shA, 7, id, "late", ver(2500, 0, 1))); out[0] != Superseded {
		t.Fatalf("older append after remove: %v", out[0])
	}
	if n, _ := mustCount(t, s, shA, 7); n != 0 {
		t.Fatalf("count after superseded append = %d", n)
	}
	if out := mustApply(t, s, appM(shA, 7, id, "p3", ver(1000, 0, 1))); out[0] != Applied {
		t.Fatalf("newer append: %v", out[0])
	}
	es := rangeAll(t, s, shA, 7, 10)
	if len(es) != 1 || es[0].ID != id || string(es[0].Payload) != "p3" {
		t.Fatalf("Range after re-append = %+v", es)
	}
	if n, _ := mustCount(t, s, shA, 7); n != 1 {
		t.Fatalf("count after re-append = %d", n)
	}
}

func TestApplyInvalidBatchAppliesNothing(t *testing.T) {
	ctx := context.Background()
	now := testNow
	farID := uint64(ids.NewID(now.Add(time.Minute), 1, 1, 0))
	okID := idIn(time.April, 1, 0, 0)
	v := ver(1000, 0, 1)
	farVer := Version{HLC: ids.MakeTimestamp(now.Add(time.Minute).UnixMilli(), 0), Site: 1}
	cases := []struct {
		name     string
		bad      Mutation
		sentinel error
		want     []string
	}{
		{"oversized value", Mutation{Op: OpPut, Shard: shA, Table: tContent, Key: []byte("k"), Value: make([]byte, 65), Version: v},
			ErrInvalid, []string{"value", "65 bytes", "limit is 64"}},
		{"oversized key", Mutation{Op: OpPut, Shard: shA, Table: tContent, Key: make([]byte, 33), Value: []byte("v"), Version: v},
			ErrInvalid, []string{"key", "33 bytes", "limit is 32"}},
		{"unknown table", Mutation{Op: OpPut, Shard: shA, Table: "nope", Key: []byte("k"), Value: []byte("v"), Version: v},
			ErrTableNotFound, []string{`"nope"`}},
		{"empty table", Mutation{Op: OpPut, Shard: shA, Key: []byte("k"), Value: []byte("v"), Version: v},
			ErrInvalid, []string{"table name is empty"}},
		{"unknown shard", Mutation{Op: OpPut, Shard: "nope", Table: tContent, Key: []byte("k"), Value: []byte("v"), Version: v},
			ErrShardNotFound, []string{`"nope"`}},
		{"empty shard", Mutation{Op: OpPut, Table: tContent, Key: []byte("k"), Value: []byte("v"), Version: v},
			ErrInvalid, []string{"shard name is empty"}},
		{"zero owner", Mutation{Op: OpAppend, Shard: shA, Table: tIndex, ID: okID, Version: v},
			ErrInvalid, []string{"owner"}},
		{"zero id", Mutation{Op: OpAppend, Shard: shA, Table: tIndex, Owner: 1, Version: v},
			ErrInvalid, []string{"id", "zero"}},
		{"top bit id", Mutation{Op: OpRemove, Shard: shA, Table: tIndex, Owner: 1, ID: 1 << 63, Version: v},
			ErrInvalid, []string{"id", "top bit"}},
		{"id too far in future", Mutation{Op: OpAppend, Shard: shA, Table: tIndex, Owner: 1, ID: farID, Version: v},
			ErrInvalid, []string{"id", "bound is 10s"}},
		{"far-future version", Mutation{Op: OpPut, Shard: shA, Table: tContent, Key: []byte("k"), Value: []byte("v"), Version: farVer},
			ErrInvalid, []string{"version", "ahead", "bound is 10s"}},
		{"zero version", Mutation{Op: OpPut, Shard: shA, Table: tContent, Key: []byte("k"), Value: []byte("v")},
			ErrInvalid, []string{"version"}},
		{"empty key", Mutation{Op: OpDelete, Shard: shA, Table: tContent, Version: v},
			ErrInvalid, []string{"key is empty"}},
		{"empty value", Mutation{Op: OpPut, Shard: shA, Table: tContent, Key: []byte("k"), Version: v},
			ErrInvalid, []string{"value is empty"}},
		{"delete with value", Mutation{Op: OpDelete, Shard: shA, Table: tContent, Key: []byte("k"), Value: []byte("v"), Version: v},
			ErrInvalid, []string{"value"}},
		{"payload of 256 bytes", Mutation{Op: OpAppend, Shard: shA, Table: tIndex, Owner: 1, ID: okID, Payload: make([]byte, 256), Version: v},
			ErrInvalid, []string{"payload", "256 bytes", "limit is 255"}},
		{"remove with payload", Mutation{Op: OpRemove, Shard: shA, Table: tIndex, Owner: 1, ID: okID, Payload: []byte("p"), Version: v},
			ErrInvalid, []string{"payload"}},
		{"put on index table", Mutation{Op: OpPut, Shard: shA, Table: tIndex, Key: []byte("k"), Value: []byte("v"), Version: v},
			ErrWrongKind, []string{tIndex, "index"}},
		{"append on content table", Mutation{Op: OpAppend, Shard: shA, Table: tContent, Owner: 1, ID: okID, Version: v},
			ErrWrongKind, []string{tContent, "content"}},
		{"unknown op", Mutation{Op: 9, Shard: shA, Table: tContent, Key: []byte("k"), Value: []byte("v"), Version: v},
			ErrInvalid, []string{"op"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newTestStore(t, func(o *Options) {
				o.Limits.MaxValueBytes = 64
				o.Limits.MaxKeyBytes = 16
				o.Limits.MaxKeyBytes = 32
			})
			empty := mustDigest(t, s, shA, nil, nil)
			// Eight mutations, the bad one at index 5.
			batch := []Mutation{
				putM(shA, "a", "1", v),
				appM(shA, 1, okID, "p", v),
				putM(shA, "b", "2", v),
				delM(shA, "c", v),
				appM(shA, 2, okID+1, "", v),
				c.bad,
				putM(shA, "d", "4", v),
				appM(shA, 1, okID+2, "q", v),
			}
			out, err := s.Apply(ctx, batch)
			if out != nil {
				t.Errorf("Apply returned outcomes %v with an error", out)
			}
			wantErr(t, err, c.sentinel, append([]string{"mutations[5]"}, c.want...)...)
			for _, k := range []string{"a", "b", "d"} {
				if _, ok := getValue(t, s, shA, k); ok {
					t.Errorf("key %q applied from a failed batch", k)
				}
			}
			for _, owner := range []uint64{1, 2} {
				if n, months := mustCount(t, s, shA, owner); n != 0 || len(months) != 0 {
					t.Errorf("owner %d count %d %v after a failed batch", owner, n, months)
				}
			}
			if d := mustDigest(t, s, shA, nil, nil); d != empty {
				t.Errorf("digest after failed batch %v, want empty %v", d, empty)
			}

			// Alone, the same mutation fails with the same sentinel and no
			// batch index.
			_, err = s.Apply(ctx, []Mutation{c.bad})
			wantErr(t, err, c.sentinel, c.want...)
			if strings.Contains(err.Error(), "mutations[") {
				t.Errorf("single-mutation error %q names a batch index", err)
			}
			if d := mustDigest(t, s, shA, nil, nil); d != empty {
				t.Errorf("digest after failed single mutation %v, want empty", d)
			}
		})
	}
}

func TestApplyBatchLimits(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, func(o *Options) {
		o.Limits.MaxBatchMutations = 10
		o.Limits.MaxValueBytes = 64
		o.Limits.MaxKeyBytes = 16
		o.Limits.MaxBatchBytes = 100
	})
	v := ver(1000, 0, 1)
	var many []Mutation
	for i := range 11 {
		many = append(many, putM(shA, string(rune('a'+i)), "v", v))
	}
	_, err := s.Apply(ctx, many)
	wantErr(t, err, ErrTooLarge, "11 mutations", "limit is 10")
	if _, err := s.Apply(ctx, many[:10]); err != nil {
		t.Fatalf("batch of exactly MaxBatchMutations: %v", err)
	}

	// 2 keys of 1 byte + values of 50 and 49 bytes = 101 > 100.
	big := []Mutation{
		putM(shA, "x", strings.Repeat("v", 50), v),
		putM(shA, "y", strings.Repeat("w", 49), v),
	}
	_, err = s.Apply(ctx, big)
	wantErr(t, err, ErrTooLarge, "101 bytes", "limit is 100")
	for _, k := range []string{"x", "y"} {
		if _, ok := getValue(t, s, shA, k); ok {
			t.Errorf("key %q applied from an oversized batch", k)
		}
	}
	// Exactly at the limit is accepted.
	big[1].Value = big[1].Value[:48]
	if _, err := s.Apply(ctx, big); err != nil {
		t.Fatalf("batch of exactly MaxBatchBytes: %v", err)
	}
}

func TestApplySameKeyTwiceInBatch(t *testing.T) {
	s := newTestStore(t, nil)
	older, newer := ver(2000, 0, 1), ver(1000, 0, 1)
	id := idIn(time.February, 1, 0, 0)

	out := mustApply(t, s,
		putM(shA, "k", "first", older),
		putM(shA, "k", "second", newer),
		putM(shA, "j", "newer", newer),
		putM(shA, "j", "older", older),
		appM(shA, 5, id, "p", older),
		remM(shA, 5, id, newer),
		appM(shA, 6, id, "p", older),
		appM(shA, 6, id, "q", newer),
	)
	want := []Outcome{Applied, Applied, Applied, Superseded, Applied, Applied, Applied, Applied}
	if !slices.Equal(out, want) {
		t.Fatalf("outcomes %v, want %v", out, want)
	}
	if v, _ := getValue(t, s, shA, "k"); string(v.Value) != "second" || v.Version != newer {
		t.Fatalf("k = %q@%v, want second@%v", v.Value, v.Version, newer)
	}
	if v, _ := getValue(t, s, shA, "j"); string(v.Value) != "newer" {
		t.Fatalf("j = %q, want newer", v.Value)
	}
	if n, months := mustCount(t, s, shA, 5); n != 0 || len(months) != 0 {
		t.Fatalf("owner 5 count %d %v after append+remove in one batch", n, months)
	}
	if n, _ := mustCount(t, s, shA, 6); n != 1 {
		t.Fatalf("owner 6 count %d after two appends of one entry, want 1", n)
	}
	if es := rangeAll(t, s, shA, 6, 5); len(es) != 1 || string(es[0].Payload) != "q" {
		t.Fatalf("owner 6 entries %+v, want one with payload q", es)
	}
}

func TestApplyOutcomesAndEmptyBatch(t *testing.T) {
	s := newTestStore(t, nil)
	out, err := s.Apply(context.Background(), nil)
	if err != nil || out != nil {
		t.Fatalf("empty batch: %v, %v", out, err)
	}
	id := idIn(time.January, 1, 0, 0)
	batch := []Mutation{putM(shA, "k", "v", ver(1, 0, 1)), appM(shB, 1, id, "", ver(1, 0, 1))}
	if out := mustApply(t, s, batch...); !slices.Equal(out, []Outcome{Applied, Applied}) {
		t.Fatalf("first apply: %v", out)
	}
	d := mustDigest(t, s, shB, nil, nil)
	if out := mustApply(t, s, batch...); !slices.Equal(out, []Outcome{Superseded, Superseded}) {
		t.Fatalf("replay: %v", out)
	}
	if d2 := mustDigest(t, s, shB, nil, nil); d2 != d {
		t.Fatalf("replay changed digest: %v -> %v", d, d2)
	}
	// An empty payload is valid and reads back empty.
	es := rangeAll(t, s, shB, 1, 10)
	if len(es) != 1 || len(es[0].Payload) != 0 {
		t.Fatalf("entries %+v", es)
	}
}

func TestApplyContextAndClosed(t *testing.T) {
	s := newTestStore(t, nil)
	m := putM(shA, "k", "v", ver(1, 0, 1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Apply(ctx, []Mutation{m}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply with cancelled context: %v", err)
	}
	if _, ok := getValue(t, s, shA, "k"); ok {
		t.Fatal("cancelled Apply applied")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(context.Background(), []Mutation{m}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply on closed store: %v, want ErrClosed", err)
	}
	if _, err := s.Get(context.Background(), shA, tContent, []byte("k")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get on closed store: %v, want ErrClosed", err)
	}
	if _, _, err := s.Count(context.Background(), shA, tIndex, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Count on closed store: %v, want ErrClosed", err)
	}
	if _, err := s.Digest(context.Background(), shA, nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Digest on closed store: %v, want ErrClosed", err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v, want ErrClosed", err)
	}
}

func TestMultiGet(t *testing.T) {
	s := newTestStore(t, func(o *Options) { o.Limits.MaxRangeLimit = 4 })
	ctx := context.Background()
	mustApply(t, s, putM(shA, "a", "1", ver(10, 0, 1)), putM(shA, "b", "2", ver(10, 0, 1)), delM(shA, "b", ver(5, 0, 1)))
	vs, err := s.MultiGet(ctx, shA, tContent, [][]byte{[]byte("a"), []byte("b"), []byte("c")})
	if err != nil {
		t.Fatal(err)
	}
	if vs[0] == nil || !bytes.Equal(vs[0].Value, []byte("1")) || vs[1] != nil || vs[2] != nil {
		t.Fatalf("MultiGet = %v", vs)
	}
	_, err = s.MultiGet(ctx, shA, tContent, make([][]byte, 5))
	wantErr(t, err, ErrOutOfRange, "5 keys", "limit is 4")
	_, err = s.MultiGet(ctx, shA, tContent, [][]byte{[]byte("a"), nil})
	wantErr(t, err, ErrInvalid, "keys[1]", "key is empty")
	_, err = s.MultiGet(ctx, shA, tIndex, [][]byte{[]byte("a")})
	wantErr(t, err, ErrWrongKind)
}

// A batch that fails while applying (here on a corrupt stored record) applies
// nothing, and reads of corrupt records fail rather than panic.
func TestApplyCorruptRecordAppliesNothing(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	num := shardNum(t, s, shA)
	id := idIn(time.March, 1, 0, 0)
	mustApply(t, s, appM(shA, 1, id, "p", ver(100, 0, 1)))
	// The key held a version newer than the batch's, so the batch reads
	// it (a write above every version of its key is written blind,
	// without reading what it replaces).
	mustApply(t, s, putM(shA, "bad", "v", ver(5, 0, 1)))
	for _, c := range []struct {
		name string
		key  []byte
		val  []byte
	}{
		{"short record", contentKey(num, tContent, []byte("bad")), []byte{1, 2, 3}},
		{"unknown flags", contentKey(num, tContent, []byte("bad")), append(make([]byte, 12), 0x80)},
	} {
		if err := s.db.Set(c.key, c.val, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		before := mustDigest(t, s, shA, nil, nil)
		_, err := s.Apply(ctx, []Mutation{
			putM(shA, "ok", "v", ver(10, 0, 1)),
			appM(shA, 1, id+1, "q", ver(10, 0, 1)),
			putM(shA, "bad", "v", ver(10, 0, 1)),
		})
		if err == nil {
			t.Fatalf("%s: Apply over a corrupt record succeeded", c.name)
		}
		if _, ok := getValue(t, s, shA, "ok"); ok {
			t.Fatalf("%s: failed batch applied its first mutation", c.name)
		}
		if n, _ := mustCount(t, s, shA, 1); n != 1 {
			t.Fatalf("%s: failed batch changed a count to %d", c.name, n)
		}
		if d := mustDigest(t, s, shA, nil, nil); d != before {
			t.Fatalf("%s: failed batch changed the digest", c.name)
		}
		if _, err := s.Get(ctx, shA, tContent, []byte("bad")); err == nil || errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: Get of a corrupt record: %v", c.name, err)
		}
	}

	// A live entry whose count went missing: removing it must fail, not
	// wrap the count around.
	if err := s.db.Delete(countKey(num, tIndex, ids.ID(id).Month(), 1), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	_, err := s.Apply(ctx, []Mutation{putM(shA, "ok", "v", ver(10, 0, 1)), remM(shA, 1, id, ver(10, 0, 1))})
	if err == nil || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("remove with a missing count: %v", err)
	}
	if _, ok := getValue(t, s, shA, "ok"); ok {
		t.Fatal("failed batch applied its first mutation")
	}
}

// Concurrent batches touching the same owner's counts and the same content
// key serialise: no count increment or newest write is lost.
func TestApplyConcurrentSameOwner(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	const writers, per = 8, 30
	var entries []uint64
	for i := range writers * per {
		entries = append(entries, idIn(time.Month(1+i%4), 1+i%28, i/28, uint32(i)))
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				// Each entry is appended by two writers (a replay), and every
				// writer also overwrites one hot content key.
				mine := entries[w*per+i]
				theirs := entries[((w+1)%writers)*per+i]
				v := ver(int64(10000-w*per-i), 0, uint32(w+1))
				batch := []Mutation{
					appM(shA, 1, mine, "p", ver(20000, 0, 1)),
					putM(shA, "hot", fmt.Sprintf("w%d-%d", w, i), v),
				}
				if i%2 == 0 {
					batch = append(batch, appM(shA, 1, theirs, "p", ver(20000, 0, 1)))
				}
				if _, err := s.Apply(ctx, batch); err != nil {
					t.Errorf("Apply: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n, months := mustCount(t, s, shA, 1); n != uint64(len(entries)) {
		t.Fatalf("count %d %v after %d distinct concurrent appends", n, months, len(entries))
	}
	if got := len(rangeAll(t, s, shA, 1, 100)); got != len(entries) {
		t.Fatalf("Range walks %d entries, want %d", got, len(entries))
	}
	// The newest version of "hot" (the smallest "ago", largest w*per+i) is
	// the last write of the last writer.
	want := fmt.Sprintf("w%d-%d", writers-1, per-1)
	if v, _ := getValue(t, s, shA, "hot"); string(v.Value) != want {
		t.Fatalf("hot = %q, want the newest write %q", v.Value, want)
	}
}
