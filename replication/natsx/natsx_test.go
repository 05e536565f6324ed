package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aviarydb/aviary/internal/testnet"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testCtx bounds a test's calls to the server.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func startServer(t *testing.T, cfg ServerConfig) *Server {
	t.Helper()
	if cfg.ServerName == "" {
		cfg.ServerName = "test"
	}
	s, err := StartServer(cfg)
	if err != nil {
		t.Fatalf("StartServer: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

func connect(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, js, err := Connect(testCtx(t), url, t.Name())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc, js
}

// fetchAll reads every message of stream from the start with an ephemeral
// consumer and returns their payloads.
func fetchAll(ctx context.Context, t *testing.T, js jetstream.JetStream, stream string, n int) []string {
	t.Helper()
	cons, err := js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatalf("CreateConsumer: %v", err)
	}
	var got []string
	for len(got) < n {
		batch, err := cons.Fetch(n-len(got), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		k := 0
		for m := range batch.Messages() {
			got = append(got, string(m.Data()))
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatalf("DoubleAck: %v", err)
			}
			k++
		}
		if err := batch.Error(); err != nil {
			t.Fatalf("fetch: %v", err)
		}
		if k == 0 {
			t.Fatalf("fetch: no messages after %d of %d", len(got), n)
		}
	}
	if err := js.DeleteConsumer(ctx, stream, cons.CachedInfo().Name); err != nil {
		t.Fatalf("DeleteConsumer: %v", err)
	}
	return got
}

func TestPublishConsumeAndRestart(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	s := startServer(t, ServerConfig{Dir: dir})
	port := s.Port()
	if port == 0 {
		t.Fatal("no client port")
	}
	if want := fmt.Sprintf("nats://127.0.0.1:%d", port); s.ClientURL() != want {
		t.Fatalf("ClientURL = %q, want %q", s.ClientURL(), want)
	}
	nc, js := connect(t, s.ClientURL())
	if _, err := EnsureStream(ctx, js, StreamConfig{Name: "REPL", Subjects: []string{"repl.>"}}); err != nil {
		t.Fatal(err)
	}
	kv, err := EnsureKV(ctx, js, "positions")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "us-east", []byte("42")); err != nil {
		t.Fatal(err)
	}
	const n = 20
	var want []string
	for i := range n {
		p := fmt.Sprintf("msg-%02d", i)
		want = append(want, p)
		if _, err := js.Publish(ctx, "repl.us-east", []byte(p)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	if got := fetchAll(ctx, t, js, "REPL", n); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("consumed %v, want %v", got, want)
	}

	// Restart on the same Dir and port; the connection stays open and
	// reconnects by itself.
	reconnected := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(reconnected)
	s.Shutdown()
	s2 := startServer(t, ServerConfig{Dir: dir, Port: port})
	if s2.Port() != port || s2.ClientURL() != s.ClientURL() {
		t.Fatalf("restarted on %s, want %s", s2.ClientURL(), s.ClientURL())
	}
	select {
	case <-reconnected:
	case <-ctx.Done():
		t.Fatalf("client did not reconnect: %v", ctx.Err())
	}

	str, err := js.Stream(ctx, "REPL")
	if err != nil {
		t.Fatalf("stream after restart: %v", err)
	}
	if got := str.CachedInfo().State.Msgs; got != n {
		t.Fatalf("stream has %d messages after restart, want %d", got, n)
	}
	if got := fetchAll(ctx, t, js, "REPL", n); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("after restart consumed %v, want %v", got, want)
	}
	kv, err = EnsureKV(ctx, js, "positions")
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "us-east")
	if err != nil || string(e.Value()) != "42" {
		t.Fatalf("kv after restart: %v, %v", e, err)
	}
	// The stream keeps taking writes after the restart.
	if _, err := js.Publish(ctx, "repl.us-east", []byte("after")); err != nil {
		t.Fatalf("Publish after restart: %v", err)
	}
}

func TestEnsureStreamIdempotentAndUpdates(t *testing.T) {
	ctx := testCtx(t)
	s := startServer(t, ServerConfig{Dir: t.TempDir()})
	_, js := connect(t, s.ClientURL())

	cfg := StreamConfig{Name: "REPL_us-east", Subjects: []string{"repl.us-east.>"}, MaxAge: time.Hour, MaxBytes: 1 << 20}
	s1, err := EnsureStream(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "repl.us-east.x", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	s2, err := EnsureStream(ctx, js, cfg)
	if err != nil {
		t.Fatalf("second EnsureStream: %v", err)
	}
	c1, c2 := s1.CachedInfo().Config, s2.CachedInfo().Config
	if c1.Name != c2.Name || c1.MaxAge != c2.MaxAge || c1.MaxBytes != c2.MaxBytes || c1.Duplicates != c2.Duplicates {
		t.Fatalf("config changed: %+v then %+v", c1, c2)
	}
	if s2.CachedInfo().Created != s1.CachedInfo().Created {
		t.Fatal("stream created anew")
	}
	c := c2
	if c.Storage != jetstream.FileStorage || c.Retention != jetstream.LimitsPolicy || c.Discard != jetstream.DiscardOld {
		t.Fatalf("storage %v retention %v discard %v", c.Storage, c.Retention, c.Discard)
	}
	if c.Duplicates != DuplicateWindow || c.MaxMsgs != -1 || c.Replicas != 1 {
		t.Fatalf("duplicates %v max msgs %d replicas %d", c.Duplicates, c.MaxMsgs, c.Replicas)
	}

	cfg.MaxAge = 2 * time.Hour
	cfg.MaxBytes = 0
	s3, err := EnsureStream(ctx, js, cfg)
	if err != nil {
		t.Fatalf("updating EnsureStream: %v", err)
	}
	info, err := s3.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxAge != 2*time.Hour || info.Config.MaxBytes != -1 {
		t.Fatalf("after update max age %v max bytes %d", info.Config.MaxAge, info.Config.MaxBytes)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("update lost messages: %d", info.State.Msgs)
	}

	// A MaxAge under the default window shortens the window with it.
	short, err := EnsureStream(ctx, js, StreamConfig{Name: "SHORT", Subjects: []string{"short"}, MaxAge: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if d := short.CachedInfo().Config.Duplicates; d != 200*time.Millisecond {
		t.Fatalf("duplicates window %v, want 200ms", d)
	}
}

func TestEnsureStreamInvalid(t *testing.T) {
	ctx := testCtx(t)
	s := startServer(t, ServerConfig{Dir: t.TempDir()})
	_, js := connect(t, s.ClientURL())

	for _, name := range []string{"", "a b", "a.b", "a*", "a>", "a/b", `a\b`, "a\tb", strings.Repeat("x", MaxNameLen+1)} {
		_, err := EnsureStream(ctx, js, StreamConfig{Name: name, Subjects: []string{"x"}})
		if err == nil || !strings.Contains(err.Error(), "stream name") {
			t.Errorf("EnsureStream(%q) = %v, want a stream name error", name, err)
		}
	}
	for _, cfg := range []StreamConfig{
		{Name: "A", MaxAge: -time.Second},
		{Name: "A", MaxAge: time.Millisecond},
		{Name: "A", Replicas: -1},
	} {
		if _, err := EnsureStream(ctx, js, cfg); err == nil {
			t.Errorf("EnsureStream(%+v) succeeded", cfg)
		}
	}
	if err := ValidateStreamName("REPL_us-east-1"); err != nil {
		t.Errorf("valid name refused: %v", err)
	}
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		t.Errorf("stream %q created", name)
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureKV(t *testing.T) {
	ctx := testCtx(t)
	s := startServer(t, ServerConfig{Dir: t.TempDir()})
	_, js := connect(t, s.ClientURL())

	kv, err := EnsureKV(ctx, js, "relay_positions")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "site.us-east", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "site.us-east", []byte("2")); err != nil {
		t.Fatal(err)
	}
	again, err := EnsureKV(ctx, js, "relay_positions")
	if err != nil {
		t.Fatalf("second EnsureKV: %v", err)
	}
	e, err := again.Get(ctx, "site.us-east")
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Value()) != "2" || e.Revision() != 2 {
		t.Fatalf("got %q at revision %d", e.Value(), e.Revision())
	}
	st, err := again.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 1 {
		t.Fatalf("history %d", st.History())
	}
	if si := st.(*jetstream.KeyValueBucketStatus).StreamInfo(); si.Config.Storage != jetstream.FileStorage {
		t.Fatalf("storage %v", si.Config.Storage)
	}
	if _, err := kv.Get(ctx, "missing"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("Get(missing) = %v", err)
	}
	if _, err := EnsureKV(ctx, js, "bad.name"); err == nil || !strings.Contains(err.Error(), "invalid bucket name") {
		t.Fatalf("EnsureKV(bad.name) = %v", err)
	}
}

func TestRawPublishConsume(t *testing.T) {
	ctx := testCtx(t)
	s := startServer(t, ServerConfig{Dir: t.TempDir()})
	_, js := connect(t, s.ClientURL())
	str, err := EnsureStream(ctx, js, StreamConfig{Name: "RAW", Subjects: []string{"raw.>"}})
	if err != nil {
		t.Fatal(err)
	}
	// Older messages on the subject are not counted.
	if _, err := js.Publish(ctx, "raw.bench", []byte("old")); err != nil {
		t.Fatal(err)
	}

	const n = 5000
	res, err := RawPublishConsume(ctx, js, "RAW", "raw.bench", n, 128)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Messages != n || res.Elapsed <= 0 || res.PerSecond <= 0 {
		t.Fatalf("result %+v", res)
	}
	if res.P50 <= 0 || res.P50 > res.P99 || res.P99 > res.Elapsed {
		t.Fatalf("latencies %+v", res)
	}
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != n+1 {
		t.Fatalf("stream has %d messages, want %d", info.State.Msgs, n+1)
	}
	if info.State.Consumers != 0 {
		t.Fatalf("%d consumers left", info.State.Consumers)
	}

	for _, c := range []struct{ n, size int }{{0, 128}, {10, 7}} {
		if _, err := RawPublishConsume(ctx, js, "RAW", "raw.bench", c.n, c.size); err == nil {
			t.Errorf("RawPublishConsume(n=%d, size=%d) succeeded", c.n, c.size)
		}
	}
	if _, err := RawPublishConsume(ctx, js, "NOPE", "raw.bench", 10, 8); err == nil {
		t.Error("RawPublishConsume on a missing stream succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := RawPublishConsume(cctx, js, "RAW", "raw.bench", 10, 8); !errors.Is(err, context.Canceled) {
		t.Errorf("RawPublishConsume on a cancelled context = %v", err)
	}
}

func TestDirInUse(t *testing.T) {
	dir := t.TempDir()
	startServer(t, ServerConfig{Dir: dir})
	s, err := StartServer(ServerConfig{Dir: dir})
	if err == nil {
		s.Shutdown()
		t.Fatal("second server on the same Dir started")
	}
	if !strings.Contains(err.Error(), "in use") {
		t.Fatalf("err = %v", err)
	}
}

func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	port := l.Addr().(*net.TCPAddr).Port
	s, err := StartServer(ServerConfig{Dir: dir, Port: port})
	if err == nil {
		s.Shutdown()
		t.Fatal("server started on a port in use")
	}
	if !strings.Contains(err.Error(), "listen") {
		t.Fatalf("err = %v", err)
	}
	// The failed start released Dir.
	startServer(t, ServerConfig{Dir: dir})
}

func TestServerConfigErrors(t *testing.T) {
	for _, cfg := range []ServerConfig{
		{},
		{Dir: t.TempDir(), Port: -1},
		{Dir: t.TempDir(), Port: 70000},
		{Dir: t.TempDir(), MonitorPort: -2},
	} {
		if s, err := StartServer(cfg); err == nil {
			s.Shutdown()
			t.Errorf("StartServer(%+v) succeeded", cfg)
		}
	}
}

// recordHandler keeps the records it handles.
type recordHandler struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}
func (h *recordHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &attrHandler{h: h, attrs: as}
}
func (h *recordHandler) WithGroup(string) slog.Handler { return h }

type attrHandler struct {
	h     *recordHandler
	attrs []slog.Attr
}

func (a *attrHandler) Enabled(ctx context.Context, l slog.Level) bool { return true }
func (a *attrHandler) Handle(ctx context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(a.attrs...)
	return a.h.Handle(ctx, r)
}
func (a *attrHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &attrHandler{h: a.h, attrs: append(append([]slog.Attr{}, a.attrs...), as...)}
}
func (a *attrHandler) WithGroup(string) slog.Handler { return a }

func TestLogsAndMonitor(t *testing.T) {
	h := &recordHandler{}
	s := startServer(t, ServerConfig{Dir: t.TempDir(), Logger: slog.New(h), MonitorPort: -1})
	url := s.MonitorURL()
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("MonitorURL = %q", url)
	}
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, url+"/healthz?js-enabled-only=true", nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %s", resp.Status)
	}
	s.Shutdown()

	h.mu.Lock()
	defer h.mu.Unlock()
	var ready, debug bool
	for _, r := range h.recs {
		var comp string
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "component" {
				comp = a.Value.String()
			}
			return true
		})
		if comp != "nats-server" {
			t.Fatalf("record %q has component %q", r.Message, comp)
		}
		if r.Level == slog.LevelInfo && strings.Contains(r.Message, "Server is ready") {
			ready = true
		}
		if r.Level == slog.LevelDebug {
			debug = true
		}
	}
	if !ready || !debug {
		t.Fatalf("ready notice logged: %v, debug logged: %v (%d records)", ready, debug, len(h.recs))
	}

	quiet := startServer(t, ServerConfig{Dir: t.TempDir()})
	if quiet.MonitorURL() != "" {
		t.Fatalf("monitoring on %s by default", quiet.MonitorURL())
	}
}

func TestConnectWaitsForServer(t *testing.T) {
	// A port nothing listens on, until the server below takes it (below
	// the ephemeral range: no outgoing connection takes it meanwhile).
	addr := testnet.Addr(t)
	_, p, _ := net.SplitHostPort(addr)
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + addr

	short, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	if nc, _, err := Connect(short, url, "early"); !errors.Is(err, context.DeadlineExceeded) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("Connect with no server = %v", err)
	}

	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	h := &recordHandler{}
	ctx := testCtx(t)
	go func() {
		nc, _, err := Connect(ctx, url, "waiting", LogEvents(slog.New(h)))
		done <- result{nc, err}
	}()
	startServer(t, ServerConfig{Dir: t.TempDir(), Port: port})
	r := <-done
	if r.err != nil {
		t.Fatalf("Connect: %v", r.err)
	}
	if !r.nc.IsConnected() {
		t.Fatal("not connected")
	}
	closed := make(chan struct{})
	r.nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	r.nc.Close()
	<-closed
	h.mu.Lock()
	defer h.mu.Unlock()
	var msgs []string
	for _, rec := range h.recs {
		msgs = append(msgs, rec.Message)
	}
	if !strings.Contains(strings.Join(msgs, ";"), "nats connected") {
		t.Fatalf("events logged: %v", msgs)
	}
}
