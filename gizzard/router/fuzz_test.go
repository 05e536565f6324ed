package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/shard"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fuzzMutations are one mutation of each kind, as a router journals them.
func fuzzMutations() []shard.Mutation {
	v := shard.Version{HLC: ids.MakeTimestamp(1_780_000_000_000, 3), Site: 2}
	id := uint64(ids.NewID(time.Date(2026, 5, 3, 0, 0, 0, 0, time.UTC), 1, 1, 9))
	return []shard.Mutation{
		{Op: shard.OpPut, Table: "posts", Key: []byte("k1"), Value: []byte("v1"), Version: v},
		{Op: shard.OpDelete, Table: "posts", Key: []byte("k2"), Version: v},
		{Op: shard.OpAppend, Table: "timeline", Owner: 42, ID: id, Payload: []byte{1, 2, 3, 4}, Version: v},
		{Op: shard.OpRemove, Table: "timeline", Owner: 42, ID: id},
	}
}

func mutationsEqual(a, b shard.Mutation) bool {
	return a.Op == b.Op && a.Shard == b.Shard && a.Table == b.Table && bytes.Equal(a.Key, b.Key) &&
		bytes.Equal(a.Value, b.Value) && a.Owner == b.Owner && a.ID == b.ID && bytes.Equal(a.Payload, b.Payload) &&
		a.Version == b.Version
}

// FuzzJournalEntry journals arbitrary bytes as an entry with one job and
// reads the job's share back as the retry loop does (jobMutations, the
// counterpart of encodeEntry). It must never panic. A share it returns
// names the job's shard, matches the entry's own decoding, and, encoded
// again by encodeEntry, decodes to the same mutations and map version.
func FuzzJournalEntry(f *testing.F) {
	muts := fuzzMutations()
	at := time.Date(2026, 5, 15, 12, 0, 0, 0, time.UTC)
	a := gizzard.Leaf{Node: "n1", Shard: "s1"}
	b := gizzard.Leaf{Node: "n2", Shard: "s2"}
	targets := []*target{{leaf: a, idx: []int{0, 1, 2, 3}}, {leaf: b, idx: []int{2}}}
	for _, o := range []*Origin{nil, {Site: 3, Node: "far", Seq: 99}} {
		e, err := encodeEntry(7, muts, targets, o, at)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(e, Target(a))
		f.Add(e, Target(b))
		f.Add(e, "n3/s3")
	}
	bad, _ := proto.Marshal(&pb.JournalEntry{MapVersion: 1, Targets: []*pb.JournalEntry_Target{{Node: "n1", Shard: "s1", Mutations: []uint32{5}}}})
	f.Add(bad, "n1/s1")
	noOp, _ := proto.Marshal(&pb.JournalEntry{Mutations: []*pb.Mutation{{Table: "t"}}, Targets: []*pb.JournalEntry_Target{{Node: "n", Mutations: []uint32{0}}}})
	f.Add(noOp, "n")
	f.Add([]byte{0xff, 0x01}, "n1/s1")
	f.Add([]byte{}, "/")

	st, err := shard.Open("db", shard.Options{FS: vfs.NewMem(), CacheBytes: 1 << 20, MemTableBytes: 1 << 20})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = st.Close() })
	r := New(Config{NodeID: "self", Store: st, Map: gizzard.NewMap})
	ctx := context.Background()
	// journal appends data with a job for target and returns the job's
	// share; the entry and its job are gone afterwards.
	journal := func(t *testing.T, data []byte, tgt string) ([]shard.Mutation, uint64, error) {
		seq, err := st.JournalAppend(ctx, data, []string{tgt})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := st.JobDone(seq, tgt); err != nil {
				t.Fatal(err)
			}
		}()
		return r.jobMutations(shard.Job{Seq: seq, Target: tgt})
	}
	f.Fuzz(func(t *testing.T, data []byte, tgt string) {
		got, v, err := journal(t, data, tgt)
		if err != nil {
			return
		}
		var e pb.JournalEntry
		if err := proto.Unmarshal(data, &e); err != nil {
			t.Fatalf("jobMutations decoded an entry proto rejects: %v", err)
		}
		leaf := parseTarget(tgt)
		if v != e.MapVersion {
			t.Fatalf("map version %d, the entry says %d", v, e.MapVersion)
		}
		var idx []int
		for _, et := range e.Targets {
			if et.Node == leaf.Node && et.Shard == leaf.Shard {
				for _, i := range et.Mutations {
					idx = append(idx, int(i))
				}
				break
			}
		}
		if len(got) != len(idx) {
			t.Fatalf("%d mutations for %q, the entry lists %d", len(got), tgt, len(idx))
		}
		for k, m := range got {
			var want shard.Mutation
			if err := FromProto(e.Mutations[idx[k]], &want); err != nil {
				t.Fatal(err)
			}
			want.Shard = leaf.Shard
			if !mutationsEqual(m, want) {
				t.Fatalf("mutation %d: %+v, the entry holds %+v", k, m, want)
			}
		}

		// Encode the share again, as a reroute does, and read it back.
		all := make([]int, len(got))
		for i := range all {
			all[i] = i
		}
		again, err := encodeEntry(v, got, []*target{{leaf: leaf, idx: all}}, nil, time.UnixMilli(e.AtUnixMs))
		if err != nil {
			t.Fatalf("encodeEntry of a decoded share: %v", err)
		}
		got2, v2, err := journal(t, again, tgt)
		if err != nil || v2 != v || len(got2) != len(got) {
			t.Fatalf("re-encoded share reads back as %d mutations at version %d (%v); was %d at %d", len(got2), v2, err, len(got), v)
		}
		for i := range got {
			if !mutationsEqual(got[i], got2[i]) {
				t.Fatalf("re-encoded mutation %d: %+v, was %+v", i, got2[i], got[i])
			}
		}
	})
}

// FuzzMutationProto decodes arbitrary bytes as a wire mutation (a Data
// write, a replicated entry's, a migration page's) and converts it with
// FromProto. Neither may panic; FromProto refuses exactly a mutation
// without an op. A converted mutation goes back to the wire with ToProto
// and decodes to the same mutation.
func FuzzMutationProto(f *testing.F) {
	for _, m := range fuzzMutations() {
		m.Shard = "s1"
		b, err := proto.Marshal(ToProto(&m))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	zero, _ := proto.Marshal(&pb.Mutation{Table: "t", Version: &pb.Version{}, Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{}}})
	f.Add(zero)
	none, _ := proto.Marshal(&pb.Mutation{Table: "t", Shard: "s"})
	f.Add(none)
	f.Add([]byte{0x0a, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		var p pb.Mutation
		if proto.Unmarshal(data, &p) != nil {
			return
		}
		var m shard.Mutation
		if err := FromProto(&p, &m); err != nil {
			if p.Op != nil {
				t.Fatalf("FromProto refused a mutation with op %T: %v", p.Op, err)
			}
			if !errors.Is(err, shard.ErrInvalid) {
				t.Fatalf("FromProto error %v does not wrap shard.ErrInvalid", err)
			}
			return
		}
		if m.Table != p.Table || m.Shard != p.Shard || uint64(m.Version.HLC) != p.GetVersion().GetHlc() || m.Version.Site != p.GetVersion().GetSite() {
			t.Fatalf("FromProto(%v) = %+v", &p, m)
		}
		b, err := proto.Marshal(ToProto(&m))
		if err != nil {
			t.Fatal(err)
		}
		var q pb.Mutation
		if err := proto.Unmarshal(b, &q); err != nil {
			t.Fatal(err)
		}
		var m2 shard.Mutation
		if err := FromProto(&q, &m2); err != nil || !mutationsEqual(m, m2) {
			t.Fatalf("round trip of %+v gave %+v (%v)", m, m2, err)
		}
	})
}

// FuzzParseFenced reads fencing refusals back from gRPC statuses, as a
// router reads a remote node's. A FencedError survives the trip through
// its status; any other status, whatever its message, is not one, or
// parses without panicking.
func FuzzParseFenced(f *testing.F) {
	f.Add("default-003-node-1", uint64(7), uint64(9), "fenced: shard \"x\" moved at map version 1; the write was routed by version 0")
	f.Add("", uint64(0), uint64(0), "fenced:")
	f.Add("a\"b\\c", ^uint64(0), uint64(1), "fenced: shard \"a moved at map version 18446744073709551616; the write")
	f.Add("\xff\x00é", uint64(1), ^uint64(0), "gap: origin a/b applied up to 3")
	f.Fuzz(func(t *testing.T, shardID string, stamp, fence uint64, msg string) {
		want := &FencedError{Shard: shardID, Stamp: stamp, Fence: fence}
		for _, err := range []error{want, fmt.Errorf("deliver: %w", want), want.GRPCStatus().Err()} {
			got, ok := ParseFenced(err)
			if !ok || got.Shard != want.Shard || got.Stamp != stamp || got.Fence != fence {
				t.Fatalf("ParseFenced(%v) = %+v, %v; want %+v", err, got, ok, want)
			}
		}
		for _, c := range []codes.Code{codes.FailedPrecondition, codes.Unavailable} {
			got, ok := ParseFenced(status.Error(c, msg))
			if ok && (c != codes.FailedPrecondition || !strings.HasPrefix(msg, fencedPrefix) || got == nil) {
				t.Fatalf("ParseFenced(%v %q) = %+v", c, msg, got)
			}
		}
	})
}
