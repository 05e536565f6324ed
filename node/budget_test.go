package node

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/shard"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const testBudget = 4096

// startBudgetNode starts a node with a write budget of testBudget bytes
// and a shutdown that waits a minute for calls in flight, longer than the
// tests wait.
func startBudgetNode(t *testing.T) *testNode {
	return startNode(t, Config{MaxWriteBytesInFlight: testBudget, ShutdownTimeout: time.Minute,
		Limits: shard.Limits{MaxKeyBytes: 64, MaxValueBytes: 1024, MaxBatchBytes: testBudget}})
}

func budgetPut(key string) *pb.PutRequest {
	return &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte("v")}
}

func streamPut(id uint64, key string, timeoutMs uint32) *pb.WriteStreamRequest {
	return &pb.WriteStreamRequest{Id: id, TimeoutMs: timeoutMs, Write: &pb.WriteRequest{Mutations: []*pb.Mutation{
		{Table: "statuses", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte(key), Value: []byte("v")}}}}}}
}

// holdBudget takes every byte of tn's write budget, as writes not yet
// answered would; release gives it back.
func holdBudget(t *testing.T, tn *testNode) (release func()) {
	t.Helper()
	release, _, err := tn.n.budget.take(t.Context(), testBudget, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return release
}

// waitWaiting waits until more than before writes have waited for room.
func waitWaiting(t *testing.T, tn *testNode, before uint64) {
	t.Helper()
	waitFor(t, 10*time.Second, func() error {
		if tn.n.budget.waited.Load() <= before {
			return fmt.Errorf("no write is waiting for room")
		}
		return nil
	})
}

// TestWriteBudget: once the node holds --max-write-bytes-in-flight of
// writes not yet answered, a unary write waits for room until near its
// deadline and is refused with ResourceExhausted, a stream's write with
// a timeout likewise, a stream's write without one waits, and they go on
// once room is made.
func TestWriteBudget(t *testing.T) {
	tn := startBudgetNode(t)
	ctx := t.Context()
	release := holdBudget(t, tn)

	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	began := time.Now()
	_, err := tn.data.Put(short, budgetPut("refused"))
	cancel()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--max-write-bytes-in-flight") {
		t.Fatalf("put with the budget taken: %v, want ResourceExhausted naming the flag", err)
	}
	if took := time.Since(began); took < time.Second {
		t.Fatalf("put with the budget taken was refused after %v: it did not wait for room", took)
	}
	if _, err := tn.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("refused")}); status.Code(err) != codes.NotFound {
		t.Fatalf("the refused put was applied: get %v", err)
	}

	st, err := tn.data.WriteStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	answers := make(chan *pb.WriteStreamResponse, 2)
	recvErr := make(chan error, 1)
	go func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			answers <- resp
		}
	}()
	next := func(what string) *pb.WriteStreamResponse {
		t.Helper()
		select {
		case resp := <-answers:
			return resp
		case err := <-recvErr:
			t.Fatalf("%s: the stream ended: %v", what, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no answer within 10s", what)
		}
		return nil
	}
	// A write with its own timeout is refused before it.
	if err := st.Send(streamPut(1, "stream-refused", 500)); err != nil {
		t.Fatal(err)
	}
	resp := next("the stream's write with a timeout")
	var sp spb.Status
	if resp.Id != 1 || proto.Unmarshal(resp.Status, &sp) != nil || codes.Code(sp.Code) != codes.ResourceExhausted {
		t.Fatalf("the stream's write with a timeout: id %d, status %v; want ResourceExhausted", resp.Id, &sp)
	}
	// One without waits for room.
	waited := tn.n.budget.waited.Load()
	if err := st.Send(streamPut(2, "streamed", 0)); err != nil {
		t.Fatal(err)
	}
	waitWaiting(t, tn, waited)
	select {
	case resp := <-answers:
		t.Fatalf("the stream's write was answered with the budget taken: %v", resp)
	default:
	}

	madeRoom := time.Now().UnixMilli()
	release()
	if resp := next("the stream's write once room was made"); resp.Id != 2 || len(resp.Status) > 0 {
		t.Fatalf("the stream's write once room was made: id %d, status %x", resp.Id, resp.Status)
	}
	// A write that waited is stamped when it is taken, not before.
	got, err := tn.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("streamed")})
	if err != nil {
		t.Fatal(err)
	}
	if ms := int64(got.Version.GetHlc() >> 16); ms < madeRoom {
		t.Fatalf("the write that waited is stamped at %d ms, before room was made at %d ms", ms, madeRoom)
	}
	if _, err := tn.data.Put(ctx, budgetPut("after")); err != nil {
		t.Fatalf("put once room was made: %v", err)
	}
	if used := tn.n.budget.used.Load(); used != 0 {
		t.Fatalf("%d bytes still counted in flight after every write was answered", used)
	}
	bounded, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, _, err := tn.n.budget.take(bounded, testBudget+1, time.Time{}); status.Code(err) != codes.ResourceExhausted || bounded.Err() != nil {
		t.Fatalf("a write larger than the whole budget: %v, want ResourceExhausted at once", err)
	}
}

// TestWriteBudgetShutdown: a write waiting for room when the node shuts
// down is refused with Unavailable, not held until its deadline.
func TestWriteBudgetShutdown(t *testing.T) {
	tn := startBudgetNode(t)
	ctx := t.Context()
	defer holdBudget(t, tn)()
	waited := tn.n.budget.waited.Load()
	done := make(chan error, 1)
	go func() {
		long, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		_, err := tn.data.Put(long, budgetPut("at-shutdown"))
		done <- err
	}()
	waitWaiting(t, tn, waited)
	stopped := make(chan error, 1)
	go func() { stopped <- tn.stop() }()
	select {
	case err := <-done:
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "waiting for room") {
			t.Fatalf("a write waiting at shutdown: %v, want Unavailable: shutting down", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a write waiting for room held the shutdown")
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("node run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the node did not stop within 30s")
	}
}

// A node refuses a write budget smaller than one batch may be.
func TestWriteBudgetConfig(t *testing.T) {
	cfg := Config{MaxWriteBytesInFlight: 1000, Limits: shard.Limits{MaxKeyBytes: 64, MaxValueBytes: 1024, MaxBatchBytes: 2000}}
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "max write bytes in flight") {
		t.Fatalf("validate: %v", err)
	}
	cfg.MaxWriteBytesInFlight = 2000
	if err := cfg.Validate(); err != nil {
		t.Fatalf("validate a budget of one batch: %v", err)
	}
}
