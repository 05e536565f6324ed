package home

import (
	"context"
	"slices"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
)

// Liveness of the sibling timeline nodes, for sharing out the fan-out
// queue partitions: a node that stops answering loses its partitions to
// the others within about deadAfter, and gets them back when it answers
// again. Two nodes that briefly disagree both work a partition, which is
// harmless (pushes are idempotent).
const (
	pingEvery = 250 * time.Millisecond
	pingWait  = 500 * time.Millisecond
	deadAfter = 1500 * time.Millisecond
)

type liveness struct {
	mu       sync.Mutex
	lastOK   map[string]time.Time
	lastFail map[string]time.Time
}

// dead says a node has failed its pings for deadAfter. A node never pinged
// is alive.
func (l *liveness) dead(id string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	fail, ok := l.lastFail[id]
	return ok && fail.After(l.lastOK[id]) && now.Sub(l.lastOK[id]) > deadAfter
}

func (l *liveness) record(id string, ok bool, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lastOK == nil {
		l.lastOK, l.lastFail = map[string]time.Time{}, map[string]time.Time{}
	}
	if ok {
		l.lastOK[id] = at
	} else {
		l.lastFail[id] = at
	}
}

// runLiveness pings the sibling timeline nodes until ctx ends.
func (s *Service) runLiveness(ctx context.Context) {
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	for {
		v, _ := s.current()
		var wg sync.WaitGroup
		for _, id := range v.ids {
			if id == s.cfg.NodeID {
				continue
			}
			wg.Go(func() {
				pctx, cancel := context.WithTimeout(ctx, pingWait)
				defer cancel()
				err := s.replicaCall(pctx, v, id, func(c pb.TimelinesClient) error {
					_, err := c.ReplicaRead(pctx, &pb.ReplicaReadRequest{})
					return err
				})
				if ctx.Err() == nil {
					s.alive.record(id, err == nil, time.Now())
				}
			})
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// live lists the view's timeline nodes that are not dead, this one
// included.
func (s *Service) live(v *view) []string {
	now := time.Now()
	return slices.DeleteFunc(slices.Clone(v.ids), func(id string) bool { return id != s.cfg.NodeID && s.alive.dead(id, now) })
}
