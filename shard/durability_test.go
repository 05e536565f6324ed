package shard

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestAcknowledgedSurvivesPowerLoss applies batches from concurrent writers
// on a crashable in-memory file system, takes a crash clone (what a power
// loss would leave: synced data only, plus a random part of the unsynced)
// in the middle of the load, and checks on the clone that every batch
// acknowledged before the crash is present and no batch is half applied.
func TestAcknowledgedSurvivesPowerLoss(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			rng := testRand(t)
			fs := vfs.NewCrashableMem()
			clock := ids.NewManualClock(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
			s := openStore(t, "db", Options{FS: fs, Clock: clock})
			setupSchema(t, s)

			var (
				mu    sync.Mutex
				acked []string // batch names acknowledged
				tried []string
			)
			hlc := ids.NewHLC(clock, time.Second)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ctx.Err() == nil; i++ {
						name := fmt.Sprintf("w%d-%d", w, i)
						muts := make([]Mutation, 5)
						for j := range muts {
							muts[j] = putM("s1", fmt.Sprintf("%s-%d", name, j), name, Version{HLC: hlc.Now(), Site: 1})
						}
						mu.Lock()
						tried = append(tried, name)
						mu.Unlock()
						if _, err := s.Apply(ctx, muts); err != nil {
							return
						}
						mu.Lock()
						acked = append(acked, name)
						mu.Unlock()
					}
				}()
			}
			// Crash once a random amount of work is acknowledged.
			target := 50 + rng.IntN(200)
			for {
				mu.Lock()
				n := len(acked)
				mu.Unlock()
				if n >= target {
					break
				}
				time.Sleep(time.Millisecond) // polling interval
			}
			mu.Lock()
			ackedAtCrash := append([]string(nil), acked...)
			mu.Unlock()
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(100), RNG: rand.New(rand.NewPCG(rng.Uint64(), 1))})
			cancel()
			wg.Wait()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			r := openStore(t, "db", Options{FS: crashed, Clock: clock})
			for _, name := range ackedAtCrash {
				for j := range 5 {
					if _, ok := getValue(t, r, "s1", fmt.Sprintf("%s-%d", name, j)); !ok {
						t.Fatalf("acknowledged batch %s lost key %d after the crash", name, j)
					}
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for _, name := range tried {
				found := 0
				for j := range 5 {
					if _, ok := getValue(t, r, "s1", fmt.Sprintf("%s-%d", name, j)); ok {
						found++
					}
				}
				if found != 0 && found != 5 {
					t.Fatalf("batch %s half applied after the crash: %d of 5 keys", name, found)
				}
			}
			t.Logf("%d batches acknowledged before the crash, all present", len(ackedAtCrash))
		})
	}
}
