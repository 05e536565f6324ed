package node

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/api/client"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/ids"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestWriteStream: concurrent writers share one write stream; every write
// gets its own answer with its own results, every acknowledged write reads
// back with its version, and a bad write is refused alone, with the
// status a unary call gets, while the stream carries on.
func TestWriteStream(t *testing.T) {
	tn := startNode(t, Config{Limits: limitsForTest()})
	ctx := t.Context()
	c, err := client.Dial([]string{tn.n.GRPCAddr()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := c.Stream()
	defer s.Close()

	const writers, writes = 16, 30
	type acked struct {
		key string
		hlc uint64
	}
	var (
		mu      sync.Mutex
		puts    []acked
		entries = map[uint64][]uint64{} // owner -> acknowledged entry ids
		errs    []error
	)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			owner := uint64(100 + w)
			for i := range writes {
				key := fmt.Sprintf("w%d-%d", w, i)
				switch i % 3 {
				case 0:
					r, err := s.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte(key)})
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						puts = append(puts, acked{key, r.Version.GetHlc()})
					}
					mu.Unlock()
				case 1:
					r, err := s.Append(ctx, &pb.AppendRequest{Table: "user_timeline", Owner: owner, Payload: []byte("p")})
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						entries[owner] = append(entries[owner], r.Id)
					}
					mu.Unlock()
				case 2:
					// A batch of two: both results, in order, for this write.
					r, err := s.Write(ctx, &pb.WriteRequest{Mutations: []*pb.Mutation{
						{Table: "statuses", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte(key + "a"), Value: []byte(key + "a")}}},
						{Table: "statuses", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte(key + "b"), Value: []byte(key + "b")}}},
					}})
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else if len(r.Results) != 2 {
						errs = append(errs, fmt.Errorf("write %s: %d results", key, len(r.Results)))
					} else {
						puts = append(puts, acked{key + "a", r.Results[0].Version.GetHlc()}, acked{key + "b", r.Results[1].Version.GetHlc()})
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d writes failed, first: %v", len(errs), errs[0])
	}
	for _, p := range puts {
		got, err := tn.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(p.key)})
		if err != nil {
			t.Fatalf("acknowledged %s: %v", p.key, err)
		}
		if string(got.Value) != p.key || got.Version.GetHlc() != p.hlc {
			t.Fatalf("%s: read %q@%d, acknowledged %q@%d", p.key, got.Value, got.Version.GetHlc(), p.key, p.hlc)
		}
	}
	for owner, ids := range entries {
		r, err := tn.data.Count(ctx, &pb.CountRequest{Table: "user_timeline", Owner: owner})
		if err != nil {
			t.Fatal(err)
		}
		if r.Total != uint64(len(ids)) {
			t.Fatalf("owner %d: count %d, %d appends acknowledged", owner, r.Total, len(ids))
		}
	}

	// Writes queued together are combined only up to the batch limits: 16
	// writes of 1000 bytes each, against a limit of 2048 bytes a batch,
	// all succeed.
	var big sync.WaitGroup
	bigErrs := make(chan error, 16)
	for i := range 16 {
		big.Go(func() {
			_, err := s.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(fmt.Sprintf("big-%d", i)), Value: bytes.Repeat([]byte("x"), 1000)})
			bigErrs <- err
		})
	}
	big.Wait()
	close(bigErrs)
	for err := range bigErrs {
		if err != nil {
			t.Fatalf("a write within the limits, combined with others: %v", err)
		}
	}

	// Bad writes: refused alone, as a unary call is.
	farHLC := uint64(ids.MakeTimestamp(time.Now().Add(time.Hour).UnixMilli(), 0))
	many := make([]*pb.Mutation, 11)
	for i := range many {
		many[i] = &pb.Mutation{Table: "statuses", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte{byte(i)}, Value: []byte("v")}}}
	}
	for _, bad := range []struct {
		name string
		w    *pb.WriteRequest
		code codes.Code
		msg  string
	}{
		{"empty", &pb.WriteRequest{}, codes.InvalidArgument, "write.mutations is empty"},
		{"empty key", &pb.WriteRequest{Mutations: []*pb.Mutation{{Table: "statuses", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Value: []byte("v")}}}}}, codes.InvalidArgument, "key is empty"},
		{"value too big", &pb.WriteRequest{Mutations: []*pb.Mutation{{Table: "statuses", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte("k"), Value: bytes.Repeat([]byte("x"), 1025)}}}}}, codes.InvalidArgument, "1024"},
		{"unknown table", &pb.WriteRequest{Mutations: []*pb.Mutation{{Table: "nope", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte("k"), Value: []byte("v")}}}}}, codes.NotFound, "nope"},
		{"too many", &pb.WriteRequest{Mutations: many}, codes.ResourceExhausted, "limit is 10"},
		{"far future", &pb.WriteRequest{Mutations: []*pb.Mutation{{Table: "statuses", Version: &pb.Version{Hlc: farHLC}, Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte("k"), Value: []byte("v")}}}}}, codes.InvalidArgument, "version.hlc"},
	} {
		_, err := s.Write(ctx, bad.w)
		if status.Code(err) != bad.code || !strings.Contains(status.Convert(err).Message(), bad.msg) {
			t.Errorf("%s: %v, want %s naming %q", bad.name, err, bad.code, bad.msg)
		}
		if _, err := s.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("after-" + bad.name), Value: []byte("v")}); err != nil {
			t.Errorf("a write after the bad %s: %v", bad.name, err)
		}
	}

	// A writer that gives up gets its context's error.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Put(cctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")}); status.Code(err) != codes.Canceled {
		t.Fatalf("put with a cancelled context: %v, want Canceled", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")}); status.Code(err) != codes.Canceled {
		t.Fatalf("put on a closed stream: %v, want Canceled", err)
	}
}

// TestWriteStreamFailsOver: when the node a stream writes to stops, the
// stream is opened again on another node of the site and writing goes on;
// every acknowledged write is readable there. Then the same while writers
// are busy: the stopping node answers what it took and ends the stream.
func TestWriteStreamFailsOver(t *testing.T) {
	s := newSite(t)
	ctx := t.Context()
	addrs := make([]string, len(s.nodes))
	for i, tn := range s.nodes {
		addrs[i] = tn.n.GRPCAddr()
	}
	c, err := client.Dial(addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st := c.Stream()
	defer st.Close()
	var acked []string
	write := func(key string) error {
		_, err := st.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte(key)})
		if err == nil {
			acked = append(acked, key)
		}
		return err
	}
	for i := range 20 {
		if err := write(fmt.Sprintf("before-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.nodes[0].stop(); err != nil {
		t.Fatal(err)
	}
	// No write was in flight when the node stopped: the next one finds the
	// stream gone before sending and goes to another node.
	for i := range 20 {
		if err := write(fmt.Sprintf("after-%d", i)); err != nil {
			t.Fatalf("write %d after node-0 stopped: %v", i, err)
		}
	}
	// Writers busy while the node they stream to shuts down: it answers
	// the writes it took and ends the stream; the rest go to another node.
	// Every acknowledged write is there afterwards.
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	stop := make(chan struct{})
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("during-%d-%d", w, i)
				_, err := st.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte(key)})
				mu.Lock()
				if err == nil {
					acked = append(acked, key)
				} else {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	before := count()
	waitFor(t, 10*time.Second, func() error {
		if n := count(); n < before+200 {
			return fmt.Errorf("%d writes acknowledged", n)
		}
		return nil
	})
	if err := s.nodes[1].stop(); err != nil {
		t.Fatal(err)
	}
	atStop := count()
	waitFor(t, 10*time.Second, func() error {
		if n := count(); n < atStop+200 {
			return fmt.Errorf("%d writes acknowledged since node-1 stopped", n-atStop)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	for _, err := range errs {
		// A write can still fail if the node it failed over to was the
		// stopped one too; it must say so, not be lost silently.
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("write during the shutdown: %v, want Unavailable at worst", err)
		}
	}
	for _, key := range acked {
		got, err := s.nodes[2].data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(key)})
		if err != nil || string(got.Value) != key {
			t.Fatalf("acknowledged %s: %q, %v", key, got.GetValue(), err)
		}
	}
	t.Logf("%d writes acknowledged, %d failed with Unavailable", len(acked), len(errs))
}

// TestCombinedWritesAnsweredAlone: writes applied in one batch by the
// commit queue get the answers they would get alone. With one shard tree
// blocked, concurrent writes to every tree through one stream: those to
// the blocked tree are refused (FailedPrecondition), every other one
// succeeds and reads back, whatever it was combined with.
func TestCombinedWritesAnsweredAlone(t *testing.T) {
	s := newSite(t)
	ctx := t.Context()
	m := s.nodes[0].n.ns.Map()
	root := m.Roots()[0]
	const blk = "blocked-0"
	c := gizzard.Change{Who: "test", Steps: []gizzard.Step{{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: blk, Kind: gizzard.KindBlocked}}}}
	for tbl, fs := range m.Forwardings {
		for _, f := range fs {
			if f.Root == root {
				c.Steps = append(c.Steps, gizzard.Step{Op: gizzard.OpRemoveForwarding, Forwarding: &gizzard.Forwarding{Table: tbl, Base: f.Base, Root: root}},
					gizzard.Step{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: tbl, Base: f.Base, Root: blk}})
			}
		}
	}
	c.Steps = append(c.Steps, gizzard.Step{Op: gizzard.OpAddLink, Parent: blk, Child: root, Weight: 1})
	s.propose(t, c)
	m = s.nodes[0].n.ns.Map() // propose waited for every node to route with it

	cl, err := client.Dial([]string{s.nodes[0].n.GRPCAddr()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	st := cl.Stream()
	defer st.Close()
	var (
		wg               sync.WaitGroup
		mu               sync.Mutex
		refused, applied []string
		wrong            []string
	)
	for w := range 32 {
		wg.Go(func() {
			for i := range 20 {
				key := fmt.Sprintf("w%d-%d", w, i)
				fw, err := m.Lookup("statuses", gizzard.Hash([]byte(key)))
				if err != nil {
					t.Error(err)
					return
				}
				_, err = st.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte(key)})
				mu.Lock()
				switch {
				case fw.Root == blk && status.Code(err) == codes.FailedPrecondition:
					refused = append(refused, key)
				case fw.Root != blk && err == nil:
					applied = append(applied, key)
				default:
					wrong = append(wrong, fmt.Sprintf("%s (tree %s): %v", key, fw.Root, err))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(wrong) > 0 {
		t.Fatalf("%d writes answered as they would not be alone, first: %s", len(wrong), wrong[0])
	}
	if len(refused) == 0 || len(applied) == 0 {
		t.Fatalf("%d refused, %d applied: the keys did not cover both kinds of tree", len(refused), len(applied))
	}
	for _, key := range applied {
		got, err := s.nodes[0].data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(key)})
		if err != nil || string(got.Value) != key {
			t.Fatalf("acknowledged %s: %q, %v", key, got.GetValue(), err)
		}
	}
	t.Logf("%d writes refused by the blocked tree, %d applied", len(refused), len(applied))
}

// TestWriteStreamAnswersAllBeforeEnd: a client that sends writes and then
// closes its side of the stream gets an answer for every one, and every
// one is applied: the node takes every request its reader read before
// the stream's end. The node's loop is held after its first request until
// the reader has read the rest, and the end.
func TestWriteStreamAnswersAllBeforeEnd(t *testing.T) {
	tn := startNode(t, Config{})
	ctx := t.Context()
	var held atomic.Bool
	testHookStreamTook = func(readerEnded func() bool) {
		if !held.CompareAndSwap(false, true) {
			return
		}
		deadline := time.Now().Add(10 * time.Second)
		for !readerEnded() {
			if time.Now().After(deadline) {
				t.Error("the stream's reader did not see its end within 10s")
				return
			}
			time.Sleep(time.Millisecond) // polling interval
		}
	}
	t.Cleanup(func() { testHookStreamTook = nil })
	st, err := pb.NewDataClient(tn.conn).WriteStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const writes = streamReadAhead / 2
	for i := range writes {
		key := fmt.Sprintf("end-%d", i)
		req := &pb.WriteStreamRequest{Id: uint64(i + 1), Write: &pb.WriteRequest{Mutations: []*pb.Mutation{
			{Table: "statuses", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte(key), Value: []byte(key)}}}}}}
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	answered := map[uint64]bool{}
	for {
		resp, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d answers: %v", len(answered), err)
		}
		if len(resp.Status) > 0 {
			t.Fatalf("write %d refused", resp.Id)
		}
		answered[resp.Id] = true
	}
	if !held.Load() {
		t.Fatal("the test hook never ran")
	}
	if len(answered) != writes {
		t.Fatalf("%d of %d writes answered before the stream ended", len(answered), writes)
	}
	for i := range writes {
		key := fmt.Sprintf("end-%d", i)
		if _, err := pb.NewDataClient(tn.conn).Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(key)}); err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
	}
}
