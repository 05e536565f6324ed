package shard

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestBlindWritesKeepLWW checks that writes above the version bound, which
// skip reading what they replace, and writes below it, which read, give
// last-writer-wins; and that the bound survives a restart, a crash, and a
// database that predates it (the bound is then found by a scan).
func TestBlindWritesKeepLWW(t *testing.T) {
	for _, tc := range []struct {
		name   string
		reopen func(t *testing.T, s *Store, fs *vfs.MemFS) *vfs.MemFS
	}{
		{"clean restart", func(t *testing.T, s *Store, fs *vfs.MemFS) *vfs.MemFS {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return fs
		}},
		{"crash", func(t *testing.T, s *Store, fs *vfs.MemFS) *vfs.MemFS {
			// Everything not synced is lost: the bound must have been
			// synced with (or before) the acknowledged data.
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return crashed
		}},
		{"no persisted bound", func(t *testing.T, s *Store, fs *vfs.MemFS) *vfs.MemFS {
			if err := s.db.Delete(boundKey, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return fs
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			opts := testOptions()
			opts.FS = fs
			s := openStore(t, "db", opts)
			setupSchema(t, s)

			// A remote write from ahead of this clock, then an older one of
			// the same key: the older loses though it is above every
			// version that was stored before the first.
			newer, older := ver(-500, 0, 2), ver(-400, 0, 1)
			if out := mustApply(t, s, putM(shA, "k", "newer", newer)); out[0] != Applied {
				t.Fatalf("first put: %v", out[0])
			}
			if out := mustApply(t, s, putM(shA, "k", "older", ver(0, 0, 1))); out[0] != Superseded {
				t.Fatalf("older put of a key: %v, want superseded", out[0])
			}
			if got := s.bound.durable.Load(); got < uint64(newer.HLC) {
				t.Fatalf("persisted bound %v after the writes, below the stored version %v", got, newer.HLC)
			}

			r := openStore(t, "db", Options{FS: tc.reopen(t, s, fs), Clock: opts.Clock})
			if got := r.stripes[0].bound; got < uint64(newer.HLC) {
				t.Fatalf("bound %v after reopening, below the stored version %v", got, newer.HLC)
			}
			out := mustApply(t, r, putM(shA, "k", "older", older), delM(shA, "k", older))
			if out[0] != Superseded || out[1] != Superseded {
				t.Fatalf("older put and delete after reopening: %v, want superseded", out)
			}
			if v, ok := getValue(t, r, shA, "k"); !ok || string(v.Value) != "newer" || v.Version != newer {
				t.Fatalf("k = %q %v (found %v), want newer %v", v.Value, v.Version, ok, newer)
			}
			// Newer still wins, blind or not.
			newest := ver(-600, 0, 1)
			if out := mustApply(t, r, putM(shA, "k", "newest", newest)); out[0] != Applied {
				t.Fatalf("newest put: %v", out[0])
			}
			if v, _ := getValue(t, r, shA, "k"); string(v.Value) != "newest" {
				t.Fatalf("k = %q, want newest", v.Value)
			}
		})
	}
}

// TestBlindWritesInOneBatch checks that a later mutation of a key in the
// same batch sees an earlier one that was written blind.
func TestBlindWritesInOneBatch(t *testing.T) {
	s := newTestStore(t, nil)
	out := mustApply(t, s,
		putM(shA, "k", "high", ver(0, 9, 1)),
		putM(shA, "k", "low", ver(0, 1, 1)),
		delM(shA, "j", ver(0, 5, 1)),
		putM(shA, "j", "later", ver(0, 6, 1)),
	)
	if want := []Outcome{Applied, Superseded, Applied, Applied}; fmt.Sprint(out) != fmt.Sprint(want) {
		t.Fatalf("outcomes %v, want %v", out, want)
	}
	if v, _ := getValue(t, s, shA, "k"); string(v.Value) != "high" {
		t.Fatalf("k = %q, want high", v.Value)
	}
	if v, _ := getValue(t, s, shA, "j"); string(v.Value) != "later" {
		t.Fatalf("j = %q, want later", v.Value)
	}
}

// TestBlindWritesConcurrent has writers race on a few keys with random
// versions, some above the bound and some below, and checks that each key
// ends with its highest version.
func TestBlindWritesConcurrent(t *testing.T) {
	s := newTestStore(t, nil)
	rng := testRand(t)
	const writers, perWriter, keys = 8, 300, 5
	seeds := make([]uint64, writers)
	for i := range seeds {
		seeds[i] = rng.Uint64()
	}
	var (
		mu      sync.Mutex
		highest = map[string]Version{}
	)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seeds[w], uint64(w)))
			for i := range perWriter {
				k := fmt.Sprint("k", r.IntN(keys))
				// Mostly rising versions (a node's own clock), some from
				// the past (another site's, late).
				v := ver(-int64(i), uint16(r.IntN(1000)), uint32(w+1))
				if r.IntN(4) == 0 {
					v = ver(int64(r.IntN(300)), 0, uint32(w+1))
				}
				if _, err := s.Apply(context.Background(), []Mutation{putM(shA, k, v.String(), v)}); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if highest[k].Compare(v) < 0 {
					highest[k] = v
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for k, want := range highest {
		v, ok := getValue(t, s, shA, k)
		if !ok || v.Version != want || string(v.Value) != want.String() {
			t.Errorf("%s = %q %v, want the highest version %v", k, v.Value, v.Version, want)
		}
	}
}

// TestBlindWritesSortedImport: an import page (the sorted path, read with
// one forward iterator) holding a key twice, newer first, keeps the newer.
func TestBlindWritesSortedImport(t *testing.T) {
	s := newTestStore(t, nil)
	out, err := s.ImportPage(context.Background(), []Mutation{
		putM(shA, "a", "a", ver(0, 1, 1)),
		putM(shA, "k", "high", ver(0, 9, 1)),
		putM(shA, "k", "low", ver(0, 2, 1)),
		putM(shA, "z", "z", ver(0, 3, 1)),
	}, "imp", []byte("state"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []Outcome{Applied, Applied, Superseded, Applied}; fmt.Sprint(out) != fmt.Sprint(want) {
		t.Fatalf("outcomes %v, want %v", out, want)
	}
	if v, _ := getValue(t, s, shA, "k"); string(v.Value) != "high" {
		t.Fatalf("k = %q, want high", v.Value)
	}
}

// TestBlindWritesEqualHLC: a version with the same HLC as the stored one
// is not above the bound; the site breaks the tie, as without blind
// writes.
func TestBlindWritesEqualHLC(t *testing.T) {
	s := newTestStore(t, nil)
	mustApply(t, s, putM(shA, "k", "site2", ver(0, 5, 2)))
	if out := mustApply(t, s, putM(shA, "k", "site1", ver(0, 5, 1))); out[0] != Superseded {
		t.Fatalf("same HLC, lower site: %v, want superseded", out[0])
	}
	if out := mustApply(t, s, putM(shA, "k", "site3", ver(0, 5, 3))); out[0] != Applied {
		t.Fatalf("same HLC, higher site: %v, want applied", out[0])
	}
	if v, _ := getValue(t, s, shA, "k"); string(v.Value) != "site3" {
		t.Fatalf("k = %q, want site3", v.Value)
	}
}

// TestVersionBoundScan: a database without a persisted bound (written
// before it existed), or opened with RescanVersionBound after a build that
// did not keep it, is scanned: the bound is the highest content version of
// any shard, a tombstone's included, and a record that does not decode is
// skipped, not fatal.
func TestVersionBoundScan(t *testing.T) {
	for _, rescan := range []bool{false, true} {
		t.Run(fmt.Sprint("rescan=", rescan), func(t *testing.T) {
			fs := vfs.NewMem()
			opts := testOptions()
			opts.FS = fs
			s := openStore(t, "db", opts)
			setupSchema(t, s)
			highest := ver(-900, 0, 1)
			mustApply(t, s,
				putM(shA, "a", "a", ver(-100, 0, 1)),
				putM(shB, "b", "b", ver(-200, 0, 1)),
				appM(shA, 1, idIn(time.March, 1, 0, 0), "p", ver(-5000, 0, 1)), // index: not a content version
			)
			mustApply(t, s, delM(shB, "bb", highest), putM(shB, "c", "c", ver(-300, 0, 1)))
			if err := s.db.Set(contentKey(shardNum(t, s, shA), tContent, []byte("bad")), []byte{1}, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			if rescan {
				// What a build without the bound leaves: records above it.
				if err := s.db.Set(boundKey, binary.BigEndian.AppendUint64(nil, uint64(ver(0, 0, 1).HLC)), pebble.Sync); err != nil {
					t.Fatal(err)
				}
			} else if err := s.db.Delete(boundKey, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			opts.RescanVersionBound = rescan
			r := openStore(t, "db", opts)
			if got := r.stripes[12345].bound; got != uint64(highest.HLC) {
				t.Fatalf("bound %v after the scan, want the highest content version %v", ids.Timestamp(got), highest.HLC)
			}
			if out := mustApply(t, r, putM(shB, "bb", "late", ver(-800, 0, 1))); out[0] != Superseded {
				t.Fatalf("put older than the tombstone: %v, want superseded", out[0])
			}
		})
	}
}

// TestBlindWriteOverCorruptRecord documents that a write above the bound
// replaces a record that does not decode without reading it (a write at
// or below the bound reads it and fails: TestApplyCorruptRecordAppliesNothing).
func TestBlindWriteOverCorruptRecord(t *testing.T) {
	s := newTestStore(t, nil)
	if err := s.db.Set(contentKey(shardNum(t, s, shA), tContent, []byte("bad")), []byte{1}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if out := mustApply(t, s, putM(shA, "bad", "fixed", ver(0, 1, 1))); out[0] != Applied {
		t.Fatalf("blind put over a corrupt record: %v", out[0])
	}
	if v, _ := getValue(t, s, shA, "bad"); string(v.Value) != "fixed" {
		t.Fatalf("bad = %q, want fixed", v.Value)
	}
}
