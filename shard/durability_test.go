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

// TestJobRecordsSurviveCrash: job records written without a sync (JobDone,
// JobFailed, a move to the error queue) may be lost in a power loss, but
// never break the journal: after a crash clone every job of every entry is
// pending, in the error queue, or done (and then only if JobDone was
// called), never in both queues; an entry is present while any job of it
// remains; an error job an operator dropped (which syncs) stays gone; and
// a job settled before such a sync is exactly as it was left. (The seed
// does not fix everything: which unsynced writes a crash clone keeps also
// depends on Pebble's timing and on its map order.)
func TestJobRecordsSurviveCrash(t *testing.T) {
	for round := range 5 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			rng := testRand(t)
			ctx := context.Background()
			fs := vfs.NewCrashableMem()
			s := openStore(t, "db", Options{FS: fs})
			targets := []string{"n1/s1", "n2/s1", "n3/s1"}
			type state int
			const (
				pending state = iota
				failed
				errorQueue
				done
				dropped
			)
			last := map[string]state{} // "seq target" -> what was done last
			key := func(seq uint64, target string) string { return fmt.Sprintf("%d %s", seq, target) }
			// Every entry is appended (and synced) first; then its jobs are
			// settled in a random order, without syncs but for the drops.
			var seqs []uint64
			type job struct {
				seq    uint64
				target string
			}
			var jobs []job
			for i := range 40 {
				seq, err := s.JournalAppend(ctx, fmt.Appendf(nil, "entry %d", i), targets)
				if err != nil {
					t.Fatal(err)
				}
				seqs = append(seqs, seq)
				for _, tg := range targets {
					jobs = append(jobs, job{seq, tg})
				}
			}
			rng.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
			synced := map[string]bool{} // settled before a later sync (a drop's)
			var since []string          // settled since the last sync
			for _, j := range jobs {
				var err error
				st := state(rng.IntN(5))
				switch st {
				case failed:
					err = s.JobFailed(Job{Seq: j.seq, Target: j.target, Attempts: 1, LastError: "down"}, false)
				case errorQueue:
					err = s.JobFailed(Job{Seq: j.seq, Target: j.target, Attempts: 9, LastError: "refused"}, true)
				case done:
					err = s.JobDone(j.seq, j.target)
				case dropped:
					if err = s.JobFailed(Job{Seq: j.seq, Target: j.target, Attempts: 9}, true); err == nil {
						err = s.DropErrorJob(j.seq, j.target)
					}
				}
				if err != nil {
					t.Fatal(err)
				}
				k := key(j.seq, j.target)
				last[k] = st
				since = append(since, k)
				if st == dropped {
					for _, k := range since {
						synced[k] = true
					}
					since = since[:0]
				}
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rand.New(rand.NewPCG(rng.Uint64(), 1))})
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			r := openStore(t, "db", Options{FS: crashed})
			where := map[string][]bool{} // "seq target" -> [pending, error queue]
			for _, errQ := range []bool{false, true} {
				jobs, err := r.Jobs(errQ, 0, "", 1000)
				if err != nil {
					t.Fatal(err)
				}
				for _, j := range jobs {
					k := key(j.Seq, j.Target)
					if where[k] == nil {
						where[k] = make([]bool, 2)
					}
					where[k][map[bool]int{false: 0, true: 1}[errQ]] = true
				}
			}
			for _, seq := range seqs {
				held := false
				for _, tg := range targets {
					k := key(seq, tg)
					w := where[k]
					switch {
					case w != nil && w[0] && w[1]:
						t.Fatalf("job %s is both pending and in the error queue after the crash", k)
					case w == nil && last[k] != done && last[k] != dropped:
						t.Fatalf("job %s vanished in the crash (last %d)", k, last[k])
					case w != nil && last[k] == dropped:
						t.Fatalf("job %s, dropped from the error queue, came back after the crash", k)
					}
					if synced[k] {
						// Its record was synced: it is exactly as left.
						want := [2]bool{last[k] == pending || last[k] == failed, last[k] == errorQueue}
						if got := [2]bool{w != nil && w[0], w != nil && w[1]}; got != want {
							t.Fatalf("job %s, settled (%d) before a sync, is pending/error-queued %v after the crash, want %v", k, last[k], got, want)
						}
					}
					held = held || w != nil
				}
				if _, err := r.JournalEntry(seq); held && err != nil {
					t.Fatalf("entry %d lost while a job of it remains: %v", seq, err)
				}
			}
		})
	}
}
