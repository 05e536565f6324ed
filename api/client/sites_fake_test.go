package client_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/api/client"
	"github.com/aviarydb/aviary/internal/testnet"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// fakeSite is a one-node site whose Data service answers writes with
// its name, or refuses them as a site that is not active does, and reads
// with its name.
type fakeSite struct {
	pb.UnimplementedDataServer
	name   string
	addr   string
	use    atomic.Pointer[string] // non-nil: refuse writes, naming this site
	writes atomic.Int64
}

func startFake(t *testing.T, name string) *fakeSite {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSite{name: name, addr: l.Addr().String()}
	srv := grpc.NewServer()
	pb.RegisterDataServer(srv, f)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return f
}

func (f *fakeSite) site() client.Site { return client.Site{Name: f.name, Addrs: []string{f.addr}} }

func (f *fakeSite) refuse(use string) { f.use.Store(&use) }
func (f *fakeSite) accept()           { f.use.Store(nil) }

// Put refuses as node's siteStatus does, or answers with the site's name
// in the shard field.
func (f *fakeSite) Put(context.Context, *pb.PutRequest) (*pb.WriteResult, error) {
	if use := f.use.Load(); use != nil {
		st := status.New(codes.FailedPrecondition, fmt.Sprintf("site %q is fenced and takes no writes; write to site %q", f.name, *use))
		st, _ = st.WithDetails(&errdetails.ErrorInfo{Reason: client.SiteNotActiveReason, Domain: "aviary", Metadata: map[string]string{
			"site": f.name, "state": "fenced", "use": *use,
		}})
		return nil, st.Err()
	}
	f.writes.Add(1)
	return &pb.WriteResult{Shard: f.name}, nil
}

func (f *fakeSite) Get(context.Context, *pb.GetRequest) (*pb.GetResponse, error) {
	return &pb.GetResponse{Value: []byte(f.name)}, nil
}

func fakePut(t *testing.T, s *client.Sites) string {
	t.Helper()
	r, err := s.Put(t.Context(), &pb.PutRequest{Table: "t", Key: []byte("k"), Value: []byte("v")})
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	return r.Shard
}

// TestSitesGoWhereTheRefusalSays: a refusal naming a site further down the
// list sends calls there, not to the next site, for writes and reads.
func TestSitesGoWhereTheRefusalSays(t *testing.T) {
	a, b, c := startFake(t, "a"), startFake(t, "b"), startFake(t, "c")
	a.refuse("c")
	s := dialSites(t, []client.Site{a.site(), b.site(), c.site()}, client.WithClock(newClock()))
	for range 3 {
		if got := fakePut(t, s); got != "c" {
			t.Fatalf("write went to %s, want c", got)
		}
	}
	if s.Current() != "c" {
		t.Fatalf("current %s, want c", s.Current())
	}
	r, err := s.Get(t.Context(), &pb.GetRequest{Table: "t", Key: []byte("k")})
	if err != nil || string(r.Value) != "c" {
		t.Fatalf("read: %v %v, want from c", r, err)
	}
	// A refusal naming a site the client does not know: the next in order.
	a.refuse("elsewhere")
	s2 := dialSites(t, []client.Site{a.site(), c.site(), b.site()}, client.WithClock(newClock()))
	if got := fakePut(t, s2); got != "c" {
		t.Fatalf("write went to %s, want c (next in order)", got)
	}
}

// silentSite accepts connections and never says a word, as a site behind
// a partition that drops packets looks to a client.
func silentSite(t *testing.T, name string) client.Site {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return client.Site{Name: name, Addrs: []string{l.Addr().String()}}
}

// TestSitesSuspectASiteThatHangs: a call that runs out of time at a site
// gets it probed; when the probe fails too, calls go elsewhere.
func TestSitesSuspectASiteThatHangs(t *testing.T) {
	b := startFake(t, "b")
	s := dialSites(t, []client.Site{silentSite(t, "a"), b.site()}, client.WithClock(newClock()), client.WithProbeTimeout(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.Put(ctx, &pb.PutRequest{Table: "t", Key: []byte("k"), Value: []byte("v")}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("put at a silent site: %v, want DeadlineExceeded", err)
	}
	waitFor(t, 5*time.Second, func() error {
		if got := s.Current(); got != "b" {
			return fmt.Errorf("current %s", got)
		}
		return nil
	})
	if got := fakePut(t, s); got != "b" {
		t.Fatalf("write went to %s, want b", got)
	}
}

// TestSitesNoSiteAnswers: with no site reachable, a call fails with
// Unavailable naming every site.
func TestSitesNoSiteAnswers(t *testing.T) {
	s := dialSites(t, []client.Site{{Name: "a", Addrs: []string{testnet.Addr(t)}}, {Name: "b", Addrs: []string{testnet.Addr(t), testnet.Addr(t)}}}, client.WithClock(newClock()))
	_, err := s.Put(t.Context(), &pb.PutRequest{Table: "t", Key: []byte("k"), Value: []byte("v")})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `site "a"`) || !strings.Contains(err.Error(), `site "b"`) {
		t.Fatalf("put with no site up: %v, want Unavailable naming a and b", err)
	}
	if _, err := s.Get(t.Context(), &pb.GetRequest{Table: "t", Key: []byte("k")}); status.Code(err) != codes.Unavailable {
		t.Fatalf("get with no site up: %v, want Unavailable", err)
	}
}

// TestSitesConcurrentSwitches: writers share a client while the first site
// keeps refusing and accepting writes again, with a short real back-off.
// Every write succeeds somewhere, and OnSwitch hears a consistent story.
func TestSitesConcurrentSwitches(t *testing.T) {
	a, b := startFake(t, "a"), startFake(t, "b")
	var (
		mu  sync.Mutex
		cur = "a"
		n   int // switches
		bad error
	)
	onSwitch := func(from, to, reason string) {
		mu.Lock()
		defer mu.Unlock()
		if from != cur && bad == nil {
			bad = fmt.Errorf("switch %s->%s (%s) while at %s", from, to, reason, cur)
		}
		cur = to
		n++
	}
	s, err := client.DialSites([]client.Site{a.site(), b.site()}, client.WithBackoff(time.Millisecond, 4*time.Millisecond), client.OnSwitch(onSwitch))
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 150
	var wg sync.WaitGroup
	var done atomic.Int64
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if w == 0 && i%25 == 0 {
					if i%50 == 0 {
						a.refuse("b")
					} else {
						a.accept()
					}
				}
				if _, err := s.Put(t.Context(), &pb.PutRequest{Table: "t", Key: []byte("k"), Value: []byte("v")}); err != nil {
					errs <- err
					return
				}
				_ = s.Current()
				done.Add(1)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("put: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if bad != nil {
		t.Error(bad)
	}
	if n == 0 {
		t.Error("no switch: a's refusals were not seen")
	}
	t.Logf("%d switches; writes at a %d, at b %d", n, a.writes.Load(), b.writes.Load())
	if n := a.writes.Load() + b.writes.Load(); n != done.Load() || n != writers*each {
		t.Errorf("%d writes applied, %d acknowledged, want %d", n, done.Load(), writers*each)
	}
	if _, err := s.Put(t.Context(), &pb.PutRequest{Table: "t"}); err == nil {
		t.Error("put after close succeeded")
	}
}
