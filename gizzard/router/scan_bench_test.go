package router

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/aviarydb/aviary/shard"
)

// BenchmarkScanBacklog times one scan of the retry loop over a journal
// holding a backlog of failed jobs for node "other", none due: with the
// node down (its jobs passed over unread), and up (each job read to find
// it is not due; the loop scans so only when a job may be due).
func BenchmarkScanBacklog(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		st := openStore(b)
		ctx := context.Background()
		const target = "other/a"
		next := time.Now().Add(time.Hour)
		for range n {
			seq, err := st.JournalAppend(ctx, []byte("x"), []string{target})
			if err != nil {
				b.Fatal(err)
			}
			j := shard.Job{Seq: seq, Target: target, Attempts: 3, LastError: "rpc error: code = Unavailable desc = not answering", Failed: time.Now(), Next: next}
			if err := st.JobFailed(j, false); err != nil {
				b.Fatal(err)
			}
		}
		for _, down := range []bool{true, false} {
			b.Run(fmt.Sprintf("jobs=%d/down=%v", n, down), func(b *testing.B) {
				// (No probe goes out: DownFor does not pass.)
				r := New(Config{NodeID: "self", Store: st, Map: localMap(b), Remote: &gatedRemote{gate: make(chan struct{})}, DownFor: time.Hour})
				if down {
					r.nodeAnswered("other", context.DeadlineExceeded)
				}
				sem := make(chan struct{}, 16)
				for b.Loop() {
					r.scan(ctx, sem)
				}
				r.wg.Wait()
			})
		}
	}
}
