package nameserver

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/hashicorp/raft"
)

// command is a raft log entry: one operator change of the shard map.
type command struct {
	Change gizzard.Change `json:"change"`
}

// applyResult is what fsm.Apply returns through raft's ApplyFuture.
type applyResult struct {
	version uint64
	err     error
}

// fsm is the shard map as a raft state machine. Apply is deterministic: it
// depends only on the map and the change (whose time the proposer set). The
// current map is never mutated in place: each change builds a new one and
// swaps it in, so readers hold immutable maps without locks.
type fsm struct {
	mu struct {
		sync.Mutex
		m       *gizzard.Map
		changed chan struct{} // closed and replaced on every new map
	}
}

var _ raft.FSM = (*fsm)(nil)

func newFSM() *fsm {
	f := &fsm{}
	f.mu.m = gizzard.NewMap()
	f.mu.changed = make(chan struct{})
	return f
}

// current returns the current map (immutable: do not modify) and a channel
// closed when it is replaced.
func (f *fsm) current() (*gizzard.Map, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.m, f.mu.changed
}

func (f *fsm) swapLocked(m *gizzard.Map) {
	f.mu.m = m
	close(f.mu.changed)
	f.mu.changed = make(chan struct{})
}

// Apply applies one committed change. An invalid change (possible only if
// the map moved between the proposer's check and the commit) changes
// nothing and returns its error to the proposer.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var c command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return applyResult{err: fmt.Errorf("nameserver: undecodable log entry %d: %w", l.Index, err)}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	next := f.mu.m.Clone()
	if err := next.Apply(c.Change); err != nil {
		return applyResult{err: err}
	}
	f.swapLocked(next)
	return applyResult{version: next.Version}
}

// Snapshot captures the current map; raft persists it off the apply path.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	m, _ := f.current()
	return mapSnapshot{m}, nil
}

// Restore replaces the map with a snapshot's.
func (f *fsm) Restore(r io.ReadCloser) error {
	defer r.Close()
	m := gizzard.NewMap()
	if err := json.NewDecoder(r).Decode(m); err != nil {
		return fmt.Errorf("nameserver: restore snapshot: %w", err)
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("nameserver: restore snapshot: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.swapLocked(m)
	return nil
}

type mapSnapshot struct{ m *gizzard.Map }

func (s mapSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.m); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("nameserver: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (mapSnapshot) Release() {}
