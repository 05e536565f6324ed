package nameserver

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/hashicorp/raft"
)

// fuzzChanges build a small site: two nodes, two tables, a replicated tree
// forwarded to, a second site.
func fuzzChanges() []gizzard.Change {
	at := time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
	steps := [][]gizzard.Step{
		{
			{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: "n1", GRPCAddr: "127.0.0.1:7001", RaftAddr: "127.0.0.1:8001"}},
			{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: "n2", GRPCAddr: "127.0.0.1:7002", RaftAddr: "127.0.0.1:8002", Timeline: true}},
			{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "posts", Kind: gizzard.TableContent}},
			{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "timeline", Kind: gizzard.TableIndex}},
		},
		{
			{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "p1", Kind: gizzard.KindPhysical, Node: "n1"}},
			{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "p2", Kind: gizzard.KindPhysical, Node: "n2"}},
			{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "r", Kind: gizzard.KindReplicating, Children: []gizzard.Link{{Child: "p1", Weight: 1}, {Child: "p2", Weight: 2}}}},
			{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "posts", Base: 0, Root: "r"}},
			{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "timeline", Base: 0, Root: "r"}},
		},
		{
			{Op: gizzard.OpAddSite, Site: &gizzard.Site{Name: "east", ID: 1, NATSURL: "nats://127.0.0.1:4222"}},
			{Op: gizzard.OpAddSite, Site: &gizzard.Site{Name: "west", ID: 2, NATSURL: "nats://127.0.0.1:5222"}},
		},
	}
	cs := make([]gizzard.Change, len(steps))
	for i, s := range steps {
		cs[i] = gizzard.Change{Steps: s, Who: "fuzz", From: "10.0.0.1", At: at.Add(time.Duration(i) * time.Minute)}
	}
	return cs
}

func mustCommand(tb testing.TB, c gizzard.Change) []byte {
	tb.Helper()
	b, err := json.Marshal(command{Change: c})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// fuzzFSM returns an FSM holding m.
func fuzzFSM(m *gizzard.Map) *fsm {
	f := newFSM()
	f.mu.Lock()
	f.swapLocked(m.Clone())
	f.mu.Unlock()
	return f
}

func encodeMap(tb testing.TB, m *gizzard.Map) []byte {
	tb.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzFSMApply applies an arbitrary raft log entry to the shard-map state
// machine. Apply must never panic and always answer an applyResult. A
// refused entry leaves the current map as it was; an applied one makes a
// new valid map one version on, without touching the map readers hold. Two
// replicas applying the same entry hold identical maps.
func FuzzFSMApply(f *testing.F) {
	base := gizzard.NewMap()
	for _, c := range fuzzChanges() {
		f.Add(mustCommand(f, c))
		if err := base.Apply(c); err != nil {
			f.Fatal(err)
		}
	}
	at := time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC)
	for _, c := range []gizzard.Change{
		{Steps: []gizzard.Step{{Op: gizzard.OpNote, Note: "drill"}}, Who: "ops", At: at},
		{Steps: []gizzard.Step{{Op: gizzard.OpSetWeight, Parent: "r", Child: "p1", Weight: 3}}, At: at, IfVersion: 3},
		{Steps: []gizzard.Step{{Op: gizzard.OpRemoveNode, NodeID: "n1"}}, At: at},
		{Steps: []gizzard.Step{{Op: gizzard.OpUpdateSite, Site: &gizzard.Site{Name: "west", ID: 2, NATSURL: "nats://x", State: gizzard.SiteFenced, Use: "east"}}}, At: at},
	} {
		f.Add(mustCommand(f, c))
	}
	f.Add([]byte(`{"change":{"steps":[{"op":"note","note":"x"}],"at":"10000-01-01T00:00:00Z"}}`))
	f.Add([]byte(`{"change":{"steps":[]}}`))
	f.Add([]byte(`{"change":null}`))
	f.Add([]byte(`{"change":{"steps":[{"op":"add_link","parent":"r","child":"r"}]}}`))
	f.Add([]byte(`not json`))
	baseJSON := encodeMap(f, base)
	f.Fuzz(func(t *testing.T, data []byte) {
		sm := fuzzFSM(base)
		old, changed := sm.current()
		if got := sm.Apply(&raft.Log{Type: raft.LogNoop, Index: 6, Data: data}); got != nil {
			t.Fatalf("Apply of a non-command entry = %v", got)
		}
		res, ok := sm.Apply(&raft.Log{Type: raft.LogCommand, Index: 7, Data: data}).(applyResult)
		if !ok {
			t.Fatal("Apply did not return an applyResult")
		}
		if !bytes.Equal(encodeMap(t, old), baseJSON) {
			t.Fatal("Apply modified the map readers hold")
		}
		cur, _ := sm.current()
		if res.err != nil {
			if cur != old {
				t.Fatalf("a refused entry (%v) replaced the map", res.err)
			}
			return
		}
		select {
		case <-changed:
		default:
			t.Fatal("an applied entry did not signal the change")
		}
		if res.version != base.Version+1 || cur.Version != res.version {
			t.Fatalf("applied at version %d, map at %d, base was %d", res.version, cur.Version, base.Version)
		}
		if err := cur.Validate(); err != nil {
			t.Fatalf("map invalid after an applied entry: %v", err)
		}
		other := fuzzFSM(base)
		if r2 := other.Apply(&raft.Log{Type: raft.LogCommand, Index: 7, Data: data}).(applyResult); r2.err != nil || r2.version != res.version {
			t.Fatalf("a second replica answered %+v, the first %+v", r2, res)
		}
		m2, _ := other.current()
		if !bytes.Equal(encodeMap(t, m2), encodeMap(t, cur)) {
			t.Fatal("two replicas applying the same entry hold different maps")
		}
	})
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// FuzzFSMRestore restores the shard-map state machine from an arbitrary
// snapshot. Restore must never panic: it fails with an error, leaving the
// map as it was, or installs a valid map. A restored map persists to a
// snapshot that restores to the same map, and takes further changes.
func FuzzFSMRestore(f *testing.F) {
	full := gizzard.NewMap()
	for _, c := range fuzzChanges() {
		if err := full.Apply(c); err != nil {
			f.Fatal(err)
		}
	}
	for _, m := range []*gizzard.Map{gizzard.NewMap(), full} {
		var sink memSink
		if err := (mapSnapshot{m}).Persist(&sink); err != nil {
			f.Fatal(err)
		}
		f.Add(sink.Bytes())
	}
	f.Add([]byte(`{"version":1,"nodes":null,"shards":{"p":{"id":"p","kind":"physical","node":"n"}}}`))
	f.Add([]byte(`{"version":0,"audit":[{"version":1}]}`))
	f.Add([]byte(`{"version":2} trailing`))
	f.Add([]byte(`[]`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		sm := newFSM()
		before, _ := sm.current()
		if err := sm.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			if cur, _ := sm.current(); cur != before {
				t.Fatalf("a failed restore (%v) replaced the map", err)
			}
			return
		}
		m, _ := sm.current()
		if err := m.Validate(); err != nil {
			t.Fatalf("restored an invalid map: %v", err)
		}
		snap, err := sm.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		var sink memSink
		if err := snap.Persist(&sink); err != nil || sink.cancelled {
			t.Fatalf("persisting a restored map: %v", err)
		}
		snap.Release()
		again := newFSM()
		if err := again.Restore(io.NopCloser(&sink)); err != nil {
			t.Fatalf("a persisted snapshot does not restore: %v", err)
		}
		m2, _ := again.current()
		if !bytes.Equal(encodeMap(t, m), encodeMap(t, m2)) {
			t.Fatal("a persisted snapshot restores to another map")
		}
		at := time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC)
		for _, c := range []gizzard.Change{
			{Steps: []gizzard.Step{{Op: gizzard.OpNote, Note: "after restore"}}, At: at},
			{Steps: []gizzard.Step{{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: "zz9"}}, {Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "zz9-p", Kind: gizzard.KindPhysical, Node: "zz9"}}}, At: at},
		} {
			res := again.Apply(&raft.Log{Type: raft.LogCommand, Index: 9, Data: mustCommand(t, c)}).(applyResult)
			cur, _ := again.current()
			if err := cur.Validate(); err != nil {
				t.Fatalf("map invalid after a change to a restored map (%v): %v", res.err, err)
			}
		}
	})
}
