package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/aviarydb/aviary/shard"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) {
	// hashicorp/raft does not track the goroutines serving inbound raft
	// connections; each ends when its peer closes the connection.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"))
}

type testNode struct {
	n     *Node
	data  pb.DataClient
	admin pb.ShardAdminClient
	hc    healthpb.HealthClient
	ns    pb.NameserverClient
	conn  *grpc.ClientConn
	stop  func() error
}

// startNode runs a node on ephemeral loopback ports in a temporary
// directory and returns clients for it. The node stops at the end of the
// test.
func startNode(t *testing.T, cfg Config) *testNode {
	t.Helper()
	tn := launchNode(t, cfg)
	tn.waitServing(t)
	return tn
}

// launchNode is startNode without waiting for the node to serve.
func launchNode(t *testing.T, cfg Config) *testNode {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.GRPCAddr == "" {
		cfg.GRPCAddr = "127.0.0.1:0"
	}
	cfg.HTTPAddr = "127.0.0.1:0"
	if cfg.RaftAddr == "" {
		cfg.RaftAddr = "127.0.0.1:0"
	}
	n, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	// With TLS, the test talks to the node as the node itself.
	sec := &netx.Security{TLS: cfg.TLS}
	cc, err := netx.Dial(n.GRPCAddr(), sec.DialOption(n.GRPCAddr(), tlsx.Expect{}))
	if err != nil {
		t.Fatal(err)
	}
	var stopped bool
	var runErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-done
			_ = cc.Close()
		}
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("node run: %v", err)
		}
	})
	return &testNode{n: n, data: pb.NewDataClient(cc), admin: pb.NewShardAdminClient(cc), hc: healthpb.NewHealthClient(cc), ns: pb.NewNameserverClient(cc), conn: cc, stop: stop}
}

// waitServing waits until the node's health service says SERVING.
func (tn *testNode) waitServing(t *testing.T) {
	t.Helper()
	waitFor(t, 10*time.Second, func() error {
		r, err := tn.hc.Check(t.Context(), &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if r.Status != healthpb.HealthCheckResponse_SERVING {
			return errors.New(r.Status.String())
		}
		return nil
	})
}

// waitFor polls fn until it returns nil or the deadline passes.
func waitFor(t *testing.T, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
	t.Fatalf("condition not met after %s: %v", total, err)
}

func TestEndToEnd(t *testing.T) {
	tn := startNode(t, Config{})
	ctx := t.Context()

	put, err := tn.data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("s1"), Value: []byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	if put.Outcome != pb.Outcome_OUTCOME_APPLIED || put.Shard == "" || put.Version.GetHlc() == 0 {
		t.Fatalf("put result %v", put)
	}
	got, err := tn.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("s1")})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Value) != "hello" || got.Version.GetHlc() != put.Version.GetHlc() {
		t.Fatalf("get %q %v, want hello %v", got.Value, got.Version, put.Version)
	}

	// A replayed older version is superseded and changes nothing.
	old := &pb.Version{Hlc: put.Version.Hlc - 1, Site: 3}
	r, err := tn.data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("s1"), Value: []byte("stale"), Version: old})
	if err != nil {
		t.Fatal(err)
	}
	if r.Outcome != pb.Outcome_OUTCOME_SUPERSEDED {
		t.Fatalf("stale put outcome %v", r.Outcome)
	}

	mg, err := tn.data.MultiGet(ctx, &pb.MultiGetRequest{Table: "statuses", Keys: [][]byte{[]byte("s1"), []byte("nope")}})
	if err != nil {
		t.Fatal(err)
	}
	if !mg.Items[0].Found || string(mg.Items[0].Value) != "hello" || mg.Items[1].Found {
		t.Fatalf("multiget %v", mg.Items)
	}
	if _, err := tn.data.Delete(ctx, &pb.DeleteRequest{Table: "statuses", Key: []byte("s1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("s1")}); status.Code(err) != codes.NotFound {
		t.Fatalf("get after delete: %v", err)
	}

	// Index: node-assigned ids, newest first, cursors, counts.
	var appended []uint64
	for i := range 5 {
		r, err := tn.data.Append(ctx, &pb.AppendRequest{Table: "user_timeline", Owner: 7, Payload: []byte{byte(i)}})
		if err != nil {
			t.Fatal(err)
		}
		appended = append(appended, r.Id)
	}
	rg, err := tn.data.Range(ctx, &pb.RangeRequest{Table: "user_timeline", Owner: 7, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(rg.Entries) != 2 || rg.Entries[0].Id != appended[4] || rg.Entries[1].Id != appended[3] || rg.NextMaxId != appended[3]-1 {
		t.Fatalf("range %v next %d, appended %v", rg.Entries, rg.NextMaxId, appended)
	}
	rg, err = tn.data.Range(ctx, &pb.RangeRequest{Table: "user_timeline", Owner: 7, MaxId: rg.NextMaxId, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(rg.Entries) != 3 || rg.Entries[2].Id != appended[0] || rg.NextMaxId != 0 {
		t.Fatalf("second page %v next %d", rg.Entries, rg.NextMaxId)
	}
	page, err := tn.data.Range(ctx, &pb.RangeRequest{Table: "user_timeline", Owner: 7, Limit: 2, Offset: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) != 2 || page.Entries[0].Id != appended[2] {
		t.Fatalf("page 1 %v", page.Entries)
	}
	if _, err := tn.data.Remove(ctx, &pb.RemoveRequest{Table: "user_timeline", Owner: 7, Id: appended[1]}); err != nil {
		t.Fatal(err)
	}
	cnt, err := tn.data.Count(ctx, &pb.CountRequest{Table: "user_timeline", Owner: 7})
	if err != nil {
		t.Fatal(err)
	}
	if cnt.Total != 4 || len(cnt.Months) != 1 || cnt.Months[0].Month != ids.MonthString(ids.MonthOf(time.Now())) {
		t.Fatalf("count %v", cnt)
	}

	// A mixed batch applies as a whole.
	w, err := tn.data.Write(ctx, &pb.WriteRequest{Mutations: []*pb.Mutation{
		{Table: "users", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte("u1"), Value: []byte("ann")}}},
		{Table: "user_timeline", Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{Owner: 7}}},
		{Table: "users", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte("u1"), Value: []byte("bob")}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Results) != 3 || w.Results[1].Id == 0 {
		t.Fatalf("write results %v", w.Results)
	}
	got, err = tn.data.Get(ctx, &pb.GetRequest{Table: "users", Key: []byte("u1")})
	if err != nil || string(got.Value) != "bob" {
		t.Fatalf("later put in batch must win: %q %v", got.GetValue(), err)
	}

	// Admin.
	if _, err := tn.admin.CreateShard(ctx, &pb.CreateShardRequest{Name: "extra"}); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.admin.CreateShard(ctx, &pb.CreateShardRequest{Name: "extra"}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("create existing shard: %v", err)
	}
	if _, err := tn.data.Put(ctx, &pb.PutRequest{Table: "statuses", Shard: "extra", Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	ls, err := tn.admin.ListShards(ctx, &pb.ListShardsRequest{})
	if err != nil || len(ls.Shards) != 9 {
		t.Fatalf("list shards: %d %v", len(ls.GetShards()), err)
	}
	d1, err := tn.admin.DigestShard(ctx, &pb.DigestShardRequest{Name: "extra"})
	if err != nil || d1.Records != 1 || len(d1.SumHex) != 64 {
		t.Fatalf("digest %v %v", d1, err)
	}
	if _, err := tn.admin.DropShard(ctx, &pb.DropShardRequest{Name: "default-000"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("dropping a shard of the map must be refused: %v", err)
	}
	if _, err := tn.admin.DropShard(ctx, &pb.DropShardRequest{Name: "extra"}); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.data.Get(ctx, &pb.GetRequest{Table: "statuses", Shard: "extra", Key: []byte("k")}); status.Code(err) != codes.NotFound {
		t.Fatalf("get from dropped shard: %v", err)
	}
	if _, err := tn.admin.CreateTable(ctx, &pb.CreateTableRequest{Name: "likes", Kind: pb.TableKind_TABLE_KIND_INDEX}); err != nil {
		t.Fatal(err)
	}
	lt, err := tn.admin.ListTables(ctx, &pb.ListTablesRequest{})
	if err != nil || len(lt.Tables) != len(DefaultTables)+1 {
		t.Fatalf("list tables %v %v", lt, err)
	}

	// Metrics and health over HTTP.
	body := httpGet(t, "http://"+tn.n.HTTPAddr()+"/metrics")
	for _, want := range []string{`aviary_node_grpc_requests_total{code="OK",method="/aviary.v1.Data/Put"}`, "aviary_shard_wal_syncs_total", `aviary_shard_mutations_total{op="put",outcome="superseded"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if got := httpGet(t, "http://"+tn.n.HTTPAddr()+"/healthz"); got != "ok\n" {
		t.Errorf("healthz %q", got)
	}
	if err := tn.stop(); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDataSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	tn := startNode(t, Config{DataDir: dir, DefaultShards: 3})
	r, err := tn.data.Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	if err := tn.stop(); err != nil {
		t.Fatal(err)
	}
	// A different --shards on restart keeps the placement the node was
	// created with, so the key is still found.
	tn = startNode(t, Config{DataDir: dir, DefaultShards: 5})
	got, err := tn.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte("k")})
	if err != nil || got.Version.GetHlc() != r.Version.GetHlc() {
		t.Fatalf("after restart: %v %v", got, err)
	}
	ls, _ := tn.admin.ListShards(t.Context(), &pb.ListShardsRequest{})
	if len(ls.GetShards()) != 3 {
		t.Fatalf("shards after restart: %d, want 3", len(ls.GetShards()))
	}
}

func TestBadInput(t *testing.T) {
	tn := startNode(t, Config{Limits: limitsForTest()})
	ctx := t.Context()
	d, a := tn.data, tn.admin
	now := time.Now()
	okID := uint64(ids.NewID(now.Add(-time.Minute), 0, 0, 1))
	future := uint64(ids.NewID(now.Add(time.Hour), 0, 0, 1))
	farHLC := uint64(ids.MakeTimestamp(now.Add(time.Hour).UnixMilli(), 0))
	big := func(n int) []byte { return bytes.Repeat([]byte("x"), n) }
	put := func(key, value []byte) *pb.Mutation {
		return &pb.Mutation{Table: "statuses", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: key, Value: value}}}
	}
	many := make([]*pb.Mutation, 11)
	for i := range many {
		many[i] = put(binary.BigEndian.AppendUint32(nil, uint32(i)), []byte("v"))
	}

	cases := []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"empty key", func() error {
			_, err := d.Put(ctx, &pb.PutRequest{Table: "statuses", Value: []byte("v")})
			return err
		}, codes.InvalidArgument, "key is empty"},
		{"oversized key", func() error {
			_, err := d.Put(ctx, &pb.PutRequest{Table: "statuses", Key: big(65), Value: []byte("v")})
			return err
		}, codes.InvalidArgument, "key is 65 bytes, limit is 64"},
		{"empty value", func() error {
			_, err := d.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k")})
			return err
		}, codes.InvalidArgument, "value is empty"},
		{"oversized value", func() error {
			_, err := d.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: big(1025)})
			return err
		}, codes.InvalidArgument, "value is 1025 bytes, limit is 1024"},
		{"oversized payload", func() error {
			_, err := d.Append(ctx, &pb.AppendRequest{Table: "user_timeline", Owner: 1, Id: okID, Payload: big(256)})
			return err
		}, codes.InvalidArgument, "payload is 256 bytes, limit is 255"},
		{"empty table", func() error {
			_, err := d.Get(ctx, &pb.GetRequest{Key: []byte("k")})
			return err
		}, codes.InvalidArgument, "table name is empty"},
		{"unknown table", func() error {
			_, err := d.Put(ctx, &pb.PutRequest{Table: "nope", Key: []byte("k"), Value: []byte("v")})
			return err
		}, codes.NotFound, `no such table: "nope"`},
		{"unknown shard", func() error {
			_, err := d.Get(ctx, &pb.GetRequest{Table: "statuses", Shard: "nope", Key: []byte("k")})
			return err
		}, codes.NotFound, `no such shard: "nope"`},
		{"wrong table kind", func() error {
			_, err := d.Put(ctx, &pb.PutRequest{Table: "user_timeline", Key: []byte("k"), Value: []byte("v")})
			return err
		}, codes.InvalidArgument, "index table"},
		{"zero owner", func() error {
			_, err := d.Append(ctx, &pb.AppendRequest{Table: "user_timeline", Id: okID})
			return err
		}, codes.InvalidArgument, "owner is zero"},
		{"malformed id", func() error {
			_, err := d.Remove(ctx, &pb.RemoveRequest{Table: "user_timeline", Owner: 1, Id: 1 << 63})
			return err
		}, codes.InvalidArgument, "id"},
		{"future id", func() error {
			_, err := d.Append(ctx, &pb.AppendRequest{Table: "user_timeline", Owner: 1, Id: future})
			return err
		}, codes.InvalidArgument, "future"},
		{"far-future version", func() error {
			_, err := d.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v"), Version: &pb.Version{Hlc: farHLC, Site: 1}})
			return err
		}, codes.InvalidArgument, "far future"},
		{"zero version hlc", func() error {
			_, err := d.Delete(ctx, &pb.DeleteRequest{Table: "statuses", Key: []byte("k"), Version: &pb.Version{Site: 1}})
			return err
		}, codes.InvalidArgument, "version.hlc is zero"},
		{"limit too large", func() error {
			_, err := d.Range(ctx, &pb.RangeRequest{Table: "user_timeline", Owner: 1, Limit: 11})
			return err
		}, codes.OutOfRange, "limit 11, must be in [1, 10]"},
		{"negative limit", func() error {
			_, err := d.Range(ctx, &pb.RangeRequest{Table: "user_timeline", Owner: 1, Limit: -1})
			return err
		}, codes.OutOfRange, "limit -1"},
		{"offset too large", func() error {
			_, err := d.Range(ctx, &pb.RangeRequest{Table: "user_timeline", Owner: 1, Offset: 101})
			return err
		}, codes.OutOfRange, "offset 101, must be in [0, 100]"},
		{"offset with max_id", func() error {
			_, err := d.Range(ctx, &pb.RangeRequest{Table: "user_timeline", Owner: 1, Offset: 1, MaxId: okID})
			return err
		}, codes.InvalidArgument, "offset cannot be combined with max_id"},
		{"range zero owner", func() error {
			_, err := d.Count(ctx, &pb.CountRequest{Table: "user_timeline"})
			return err
		}, codes.InvalidArgument, "owner is zero"},
		{"multiget no keys", func() error {
			_, err := d.MultiGet(ctx, &pb.MultiGetRequest{Table: "statuses"})
			return err
		}, codes.InvalidArgument, "keys is empty"},
		{"multiget too many keys", func() error {
			_, err := d.MultiGet(ctx, &pb.MultiGetRequest{Table: "statuses", Keys: [][]byte{{1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}}})
			return err
		}, codes.OutOfRange, "keys: 11 in one request, limit is 10"},
		{"empty batch", func() error {
			_, err := d.Write(ctx, &pb.WriteRequest{})
			return err
		}, codes.InvalidArgument, "mutations is empty"},
		{"batch too many mutations", func() error {
			_, err := d.Write(ctx, &pb.WriteRequest{Mutations: many})
			return err
		}, codes.ResourceExhausted, "11 in one batch, limit is 10"},
		{"batch too many bytes", func() error {
			_, err := d.Write(ctx, &pb.WriteRequest{Mutations: []*pb.Mutation{put([]byte("a"), big(1000)), put([]byte("b"), big(1000)), put([]byte("c"), big(1000))}})
			return err
		}, codes.ResourceExhausted, "limit is 2048"},
		{"batch op unset", func() error {
			_, err := d.Write(ctx, &pb.WriteRequest{Mutations: []*pb.Mutation{put([]byte("a"), []byte("v")), {Table: "statuses"}}})
			return err
		}, codes.InvalidArgument, "op is unset"},
		{"batch bad mutation named", func() error {
			_, err := d.Write(ctx, &pb.WriteRequest{Mutations: []*pb.Mutation{put([]byte("a"), []byte("v")), put(nil, []byte("v"))}})
			return err
		}, codes.InvalidArgument, "mutations[1]"},
		{"bad shard name", func() error {
			_, err := a.CreateShard(ctx, &pb.CreateShardRequest{Name: "a/b"})
			return err
		}, codes.InvalidArgument, "shard name"},
		{"table kind unset", func() error {
			_, err := a.CreateTable(ctx, &pb.CreateTableRequest{Name: "t"})
			return err
		}, codes.InvalidArgument, "kind is unset"},
		{"bad retention month", func() error {
			_, err := a.DropMonths(ctx, &pb.DropMonthsRequest{Table: "user_timeline", Before: "2026-13"})
			return err
		}, codes.InvalidArgument, "before"},
		{"digest unknown shard", func() error {
			_, err := a.DigestShard(ctx, &pb.DigestShardRequest{Name: "nope"})
			return err
		}, codes.NotFound, "no such shard"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			if status.Code(err) != c.code {
				t.Fatalf("code %v (%v), want %v", status.Code(err), err, c.code)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, c.msg) {
				t.Fatalf("message %q does not contain %q", msg, c.msg)
			}
		})
	}

	// None of the rejected batches left anything behind.
	for _, k := range []string{"a", "b", "c"} {
		if _, err := d.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte(k)}); status.Code(err) != codes.NotFound {
			t.Errorf("key %q of a rejected batch: %v", k, err)
		}
	}
	// The node still serves.
	if _, err := d.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
}

func limitsForTest() shard.Limits {
	return shard.Limits{MaxKeyBytes: 64, MaxValueBytes: 1024, MaxBatchMutations: 10, MaxBatchBytes: 2048, MaxRangeLimit: 10, MaxOffset: 100}
}

func TestTombstonesCollectedAfterGrace(t *testing.T) {
	clock := ids.NewManualClock(time.Now())
	tn := startNode(t, Config{Clock: clock, TombstoneGrace: time.Hour})
	ctx := t.Context()
	for _, k := range []string{"a", "b"} {
		if _, err := tn.data.Put(ctx, &pb.PutRequest{Table: "statuses", Key: []byte(k), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tn.data.Delete(ctx, &pb.DeleteRequest{Table: "statuses", Key: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	r, err := tn.admin.CollectTombstones(ctx, &pb.CollectTombstonesRequest{})
	if err != nil || r.Collected != 0 {
		t.Fatalf("within the grace: collected %d, %v; want 0", r.GetCollected(), err)
	}
	clock.Advance(time.Hour + time.Minute)
	r, err = tn.admin.CollectTombstones(ctx, &pb.CollectTombstonesRequest{})
	if err != nil || r.Collected != 1 {
		t.Fatalf("after the grace: collected %d, %v; want 1", r.GetCollected(), err)
	}
	if _, err := tn.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("b")}); err != nil {
		t.Fatalf("live key after collection: %v", err)
	}
	if _, err := tn.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: []byte("a")}); status.Code(err) != codes.NotFound {
		t.Fatalf("deleted key after collection: %v", err)
	}
}
