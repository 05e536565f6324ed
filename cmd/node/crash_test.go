package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/api/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// testSeed returns AVIARY_SEED if set, else a fresh seed; it logs it.
func testSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("AVIARY_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("AVIARY_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed=%d (replay with AVIARY_SEED=%d)", seed, seed)
	return seed
}

// ledger records what the node acknowledged, and every batch attempted.
type ledger struct {
	mu sync.Mutex
	// puts: key -> the last acknowledged version and value of the key.
	puts map[string]ackedPut
	// appends: owner -> acknowledged entry ids.
	appends map[uint64][]uint64
	// batches: every attempted batch, by name, with whether it was acked.
	batches map[string]bool
	acks    atomic.Int64
}

type ackedPut struct {
	hlc   uint64
	value string
}

const batchSize = 10

// writes is what a crash test writer calls: unary calls (unaryWrites) or
// a client.Stream.
type writes interface {
	Put(ctx context.Context, r *pb.PutRequest) (*pb.WriteResult, error)
	Append(ctx context.Context, r *pb.AppendRequest) (*pb.WriteResult, error)
	Write(ctx context.Context, r *pb.WriteRequest) (*pb.WriteResponse, error)
}

type unaryWrites struct{ d pb.DataClient }

func (u unaryWrites) Put(ctx context.Context, r *pb.PutRequest) (*pb.WriteResult, error) {
	return u.d.Put(ctx, r)
}

func (u unaryWrites) Append(ctx context.Context, r *pb.AppendRequest) (*pb.WriteResult, error) {
	return u.d.Append(ctx, r)
}

func (u unaryWrites) Write(ctx context.Context, r *pb.WriteRequest) (*pb.WriteResponse, error) {
	return u.d.Write(ctx, r)
}

// writer drives one client's writes until an error (the node died) or stop.
func (l *ledger) writer(ctx context.Context, d writes, w, cycle int, rng *rand.Rand) {
	owner := uint64(1000 + w)
	for i := 0; ctx.Err() == nil; i++ {
		var err error
		switch rng.IntN(3) {
		case 0:
			key := fmt.Sprintf("w%d-k%d", w, rng.IntN(50))
			val := fmt.Sprintf("c%d-i%d", cycle, i)
			var r *pb.WriteResult
			r, err = d.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: []byte(val)})
			if err == nil {
				l.mu.Lock()
				l.puts[key] = ackedPut{r.Version.Hlc, val}
				l.mu.Unlock()
			}
		case 1:
			var r *pb.WriteResult
			r, err = d.Append(ctx, &pb.AppendRequest{Table: "user_timeline", Owner: owner, Payload: []byte("p")})
			if err == nil {
				l.mu.Lock()
				l.appends[owner] = append(l.appends[owner], r.Id)
				l.mu.Unlock()
			}
		case 2:
			name := fmt.Sprintf("w%d-c%d-b%d", w, cycle, i)
			ms := make([]*pb.Mutation, batchSize)
			for j := range ms {
				ms[j] = &pb.Mutation{Table: "users", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{
					Key: []byte(fmt.Sprintf("%s-%d", name, j)), Value: []byte(name)}}}
			}
			l.mu.Lock()
			l.batches[name] = false
			l.mu.Unlock()
			_, err = d.Write(ctx, &pb.WriteRequest{Mutations: ms})
			if err == nil {
				l.mu.Lock()
				l.batches[name] = true
				l.mu.Unlock()
			}
		}
		if err != nil {
			return
		}
		l.acks.Add(1)
	}
}

// verify checks every acknowledged write against a restarted node, that no
// batch was half applied, and that index counts equal what Range lists.
func (l *ledger) verify(t *testing.T, d pb.DataClient) {
	t.Helper()
	ctx := t.Context()
	l.mu.Lock()
	defer l.mu.Unlock()
	for key, want := range l.puts {
		got, err := d.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(key)})
		if err != nil {
			t.Fatalf("acknowledged put of %q lost: %v", key, err)
		}
		// A later write that was in flight at the kill may have landed.
		if got.Version.Hlc < want.hlc || (got.Version.Hlc == want.hlc && string(got.Value) != want.value) {
			t.Fatalf("key %q: read %q@%d, acknowledged %q@%d", key, got.Value, got.Version.Hlc, want.value, want.hlc)
		}
	}
	for owner, acked := range l.appends {
		var listed []uint64
		var maxID uint64
		for {
			r, err := d.Range(ctx, &pb.RangeRequest{Table: "user_timeline", Owner: owner, MaxId: maxID, Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range r.Entries {
				listed = append(listed, e.Id)
			}
			if r.NextMaxId == 0 {
				break
			}
			maxID = r.NextMaxId
		}
		present := map[uint64]bool{}
		for _, id := range listed {
			present[id] = true
		}
		for _, id := range acked {
			if !present[id] {
				t.Fatalf("owner %d: acknowledged entry %d lost", owner, id)
			}
		}
		c, err := d.Count(ctx, &pb.CountRequest{Table: "user_timeline", Owner: owner})
		if err != nil {
			t.Fatal(err)
		}
		if c.Total != uint64(len(listed)) {
			t.Fatalf("owner %d: count %d, range lists %d", owner, c.Total, len(listed))
		}
	}
	for name, acked := range l.batches {
		keys := make([][]byte, batchSize)
		for j := range keys {
			keys[j] = []byte(fmt.Sprintf("%s-%d", name, j))
		}
		r, err := d.MultiGet(ctx, &pb.MultiGetRequest{Table: "users", Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
		found := 0
		for _, it := range r.Items {
			if it.Found {
				found++
			}
		}
		if found != 0 && found != batchSize {
			t.Fatalf("batch %s half applied: %d of %d keys", name, found, batchSize)
		}
		if acked && found == 0 {
			t.Fatalf("acknowledged batch %s lost", name)
		}
	}
}

// TestCrashRecovery kills the real node binary with SIGKILL under a
// concurrent write load (half of the writers unary calls, half a shared
// write stream) several times, restarting it on the same data each
// time, and checks every acknowledged write after each restart.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the node binary")
	}
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	dir := t.TempDir()
	l := &ledger{puts: map[string]ackedPut{}, appends: map[uint64][]uint64{}, batches: map[string]bool{}}
	const cycles, writers = 5, 16
	for cycle := range cycles {
		p := startProc(t, nodeCmd(t, dir))
		d, _ := p.dial(t)
		if cycle > 0 {
			l.verify(t, d)
		}
		ctx, cancel := context.WithCancel(context.Background())
		// Half the writers send unary calls, half share a write stream.
		c, err := client.Dial([]string{p.grpcAddr})
		if err != nil {
			t.Fatal(err)
		}
		stream := c.Stream()
		var wg sync.WaitGroup
		for w := range writers {
			wrng := rand.New(rand.NewPCG(rng.Uint64(), uint64(w)))
			var ws writes = unaryWrites{d}
			if w%2 == 1 {
				ws = stream
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.writer(ctx, ws, w, cycle, wrng)
			}()
		}
		// Kill at a random point: after a random number of further acks.
		target := l.acks.Load() + int64(200+rng.IntN(800))
		deadline := time.Now().Add(2 * time.Minute)
		for l.acks.Load() < target && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond) // polling interval
		}
		if l.acks.Load() < target {
			t.Fatalf("cycle %d: load made no progress (%d acks)", cycle, l.acks.Load())
		}
		p.kill()
		wg.Wait()
		cancel()
		_ = stream.Close()
		_ = c.Close()
		t.Logf("cycle %d: killed with SIGKILL after %d acknowledged writes in total", cycle, l.acks.Load())
	}
	p := startProc(t, nodeCmd(t, dir))
	d, _ := p.dial(t)
	l.verify(t, d)
	if _, err := d.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("never-written")}); status.Code(err) != codes.NotFound {
		t.Fatalf("get of a never-written key: %v", err)
	}
	p.terminate(t)
	t.Logf("verified %d keys, %d owners, %d batches", len(l.puts), len(l.appends), len(l.batches))
}
