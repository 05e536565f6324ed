package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/internal/tlsx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// session is one command's connections to the site and its output.
type session struct {
	o      *options
	out    io.Writer
	errOut io.Writer
	// ifVersion, when set, makes changes compare-and-swap against the map
	// version a command planned them from.
	ifVersion uint64
	// devDir is the dev deployment the command works on, whose
	// certificates the session uses when no --tls-* flag is given
	// (resolveTLS). Set it with useDevDir before the first connection.
	devDir string

	mu struct {
		sync.Mutex
		conns map[string]*grpc.ClientConn
		// tls is the session's TLS material, resolved on the first
		// connection; sec its security, or secErr why it has none.
		tls    *tlsChoice
		sec    *netx.Security
		secErr error
	}
}

func newSession(o *options, out, errOut io.Writer) *session {
	s := &session{o: o, out: out, errOut: errOut, devDir: defaultDevDir}
	s.mu.conns = map[string]*grpc.ClientConn{}
	return s
}

// useDevDir makes the session take its TLS material from the dev
// deployment in dir when no --tls-* flag is given. Call it before the
// session's first connection.
func (s *session) useDevDir(dir string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.devDir = dir
}

// securityLocked returns the session's transport security, resolving and
// loading its TLS material on first use (s.mu held).
func (s *session) securityLocked() (*netx.Security, error) {
	if s.mu.tls != nil || s.mu.secErr != nil {
		return s.mu.sec, s.mu.secErr
	}
	c, err := resolveTLS(s.o, s.devDir)
	if err != nil {
		s.mu.secErr = err
		return nil, err
	}
	s.mu.tls = &c
	if c.files.CA == "" {
		return nil, nil
	}
	src, err := tlsx.Load(c.files, tlsx.Options{})
	if err != nil {
		s.mu.secErr = fmt.Errorf("ops: TLS material from %s: %w", c.from, err)
		return nil, s.mu.secErr
	}
	s.mu.sec = &netx.Security{TLS: src}
	return s.mu.sec, nil
}

// tlsSource returns the session's TLS material (nil: plaintext), for the
// Go client's connections (client.WithTLS).
func (s *session) tlsSource() (*tlsx.Source, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.securityLocked()
	if err != nil || sec == nil {
		return nil, err
	}
	return sec.TLS, nil
}

// tlsNote says how the session connects, once it has: for errors.
func (s *session) tlsNote() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.tls == nil {
		return ""
	}
	return s.mu.tls.String()
}

// close closes every connection the session opened.
func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for addr, cc := range s.mu.conns {
		_ = cc.Close()
		delete(s.mu.conns, addr)
	}
}

// conn returns the session's connection to addr, dialling it on first use.
func (s *session) conn(addr string) (*grpc.ClientConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cc, ok := s.mu.conns[addr]; ok {
		return cc, nil
	}
	sec, err := s.securityLocked()
	if err != nil {
		return nil, err
	}
	cc, err := netx.Dial(addr, sec.DialOption(addr, sec.NodePeer()))
	if err != nil {
		return nil, fmt.Errorf("ops: %w", err)
	}
	s.mu.conns[addr] = cc
	return cc, nil
}

func (s *session) nameserver(addr string) (pb.NameserverClient, error) {
	cc, err := s.conn(addr)
	if err != nil {
		return nil, err
	}
	return pb.NewNameserverClient(cc), nil
}

func (s *session) admin(addr string) (pb.ShardAdminClient, error) {
	cc, err := s.conn(addr)
	if err != nil {
		return nil, err
	}
	return pb.NewShardAdminClient(cc), nil
}

// rpcCtx bounds one RPC by --timeout.
func (s *session) rpcCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.o.timeout)
}

// rpcError is a failed RPC: what was asked of which address, and the gRPC
// status it failed with. It unwraps to the status error.
type rpcError struct {
	op, addr string
	timeout  time.Duration
	err      error
	// tls says how ops connected, for failures that may be a mismatch of
	// TLS and plaintext, or of certificates.
	tls string
}

func (e *rpcError) Error() string {
	msg := fmt.Sprintf("%s %s: %s", e.op, e.addr, describeStatus(e.err, e.timeout))
	if e.tls != "" {
		msg += "; ops connected in " + e.tls
	}
	return msg
}

func (e *rpcError) Unwrap() error { return e.err }

// rpcErr wraps the error of RPC op to addr, or returns nil.
func (s *session) rpcErr(op, addr string, err error) error {
	if err == nil {
		return nil
	}
	e := &rpcError{op: op, addr: addr, timeout: s.o.timeout, err: err}
	if mismatch(err) {
		e.tls = s.tlsNote()
	}
	return e
}

// mismatch reports whether err may come of a TLS client meeting a
// plaintext server or the reverse, or of a refused certificate.
func mismatch(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable:
		msg := strings.ToLower(st.Message())
		for _, w := range []string{"handshake", "tls", "certificate", "preface", "eof", "connection reset", "connection closed"} {
			if strings.Contains(msg, w) {
				return true
			}
		}
	case codes.Unauthenticated, codes.PermissionDenied:
		return true
	}
	return false
}

// describeStatus is a one-line account of a gRPC error: its status message
// and code, in words an operator can act on.
func describeStatus(err error, timeout time.Duration) string {
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Sprintf("no answer within %s (--timeout)", timeout)
		}
		return oneLine(err.Error())
	}
	msg := oneLine(st.Message())
	switch st.Code() {
	case codes.DeadlineExceeded:
		return fmt.Sprintf("no answer within %s (--timeout): %s", timeout, msg)
	case codes.Unavailable:
		if strings.Contains(msg, "connection refused") {
			return "unreachable: connection refused (is the node running?)"
		}
		return "unavailable: " + msg
	case codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound, codes.AlreadyExists:
		return msg
	}
	return fmt.Sprintf("%s (%s)", msg, st.Code())
}

// oneLine folds a message onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// getMap returns the shard map of the node at addr.
func (s *session) getMap(ctx context.Context, addr string) (*gizzard.Map, error) {
	ns, err := s.nameserver(addr)
	if err != nil {
		return nil, err
	}
	rctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	resp, err := ns.GetMap(rctx, &pb.GetMapRequest{})
	if err != nil {
		return nil, s.rpcErr("get map from", addr, err)
	}
	m := gizzard.NewMap()
	if err := json.Unmarshal(resp.MapJson, m); err != nil {
		return nil, fmt.Errorf("ops: the map of %s does not decode: %w", addr, err)
	}
	return m, nil
}

// siteMap returns the shard map of the node at --addr.
func (s *session) siteMap(ctx context.Context) (*gizzard.Map, error) {
	return s.getMap(ctx, s.o.addr)
}

// change builds a change of steps by --who from this host.
func (s *session) change(steps []gizzard.Step) gizzard.Change {
	return gizzard.Change{Steps: steps, Who: s.o.who, From: "ops@" + hostname(), At: time.Now().UTC(), IfVersion: s.ifVersion}
}

// proposeAt sends a change to the node at addr (which forwards it to the
// leader) and waits, within --timeout, until that node holds the new map,
// so that the next command reads it. It returns the new version.
func (s *session) proposeAt(ctx context.Context, addr string, steps []gizzard.Step) (uint64, error) {
	b, err := json.Marshal(s.change(steps))
	if err != nil {
		return 0, fmt.Errorf("ops: encode change: %w", err)
	}
	ns, err := s.nameserver(addr)
	if err != nil {
		return 0, err
	}
	rctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	resp, err := ns.Propose(rctx, &pb.ProposeRequest{ChangeJson: b})
	// Right after a site starts, or while it elects a new leader, the
	// nameserver has none: nothing was proposed, so try again (within
	// --timeout).
	for err != nil && noLeaderYet(err) && rctx.Err() == nil {
		if timex.Sleep(rctx, 100*time.Millisecond) != nil {
			break
		}
		resp, err = ns.Propose(rctx, &pb.ProposeRequest{ChangeJson: b})
	}
	if err != nil {
		err = s.rpcErr("change via", addr, err)
		if c := status.Code(err); c == codes.DeadlineExceeded || c == codes.Canceled {
			// The leader may have committed it after all.
			err = fmt.Errorf("%w (the change may still be applied: check ops audit)", err)
		}
		return 0, err
	}
	if err := s.awaitVersion(rctx, ns, resp.Version); err != nil {
		fmt.Fprintf(s.errOut, "note: version %d is committed, but %s has not applied it yet: %s\n", resp.Version, addr, describeStatus(err, s.o.timeout))
	}
	return resp.Version, nil
}

// awaitVersion waits until the nameserver ns holds version v or later.
func (s *session) awaitVersion(ctx context.Context, ns pb.NameserverClient, v uint64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ns.Watch(ctx, &pb.WatchRequest{AfterVersion: v - 1})
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

// propose sends a change via --addr and reports it: the new version and
// what changed, or as JSON.
func (s *session) propose(ctx context.Context, steps []gizzard.Step, notes ...string) error {
	v, err := s.proposeAt(ctx, s.o.addr, steps)
	if err != nil {
		return err
	}
	what := make([]string, len(steps))
	for i, st := range steps {
		what[i] = st.String()
	}
	if s.o.json {
		return s.printJSON(struct {
			Version uint64         `json:"version"`
			Steps   []gizzard.Step `json:"steps"`
			Notes   []string       `json:"notes,omitempty"`
		}{v, steps, notes})
	}
	fmt.Fprintf(s.out, "map version %d:\n", v)
	for _, w := range what {
		fmt.Fprintf(s.out, "  %s\n", w)
	}
	for _, n := range notes {
		fmt.Fprintln(s.out, n)
	}
	return nil
}

// probe is what one node says about itself.
type probe struct {
	Node       string  `json:"node"`
	GRPCAddr   string  `json:"grpc_addr"`
	Reachable  bool    `json:"reachable"`
	Ready      bool    `json:"ready"`
	MapVersion uint64  `json:"map_version"`
	RaftState  string  `json:"raft_state,omitempty"`
	Leader     string  `json:"leader,omitempty"`
	LatencyMS  float64 `json:"latency_ms"`
	Error      string  `json:"error,omitempty"`

	latency time.Duration
}

// probeNode asks the node at addr for its Status and its gRPC health.
func (s *session) probeNode(ctx context.Context, id, addr string) probe {
	p := probe{Node: id, GRPCAddr: addr}
	cc, err := s.conn(addr)
	if err != nil {
		p.Error = err.Error()
		return p
	}
	rctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	start := time.Now()
	st, err := pb.NewNameserverClient(cc).Status(rctx, &pb.StatusRequest{})
	p.latency = time.Since(start)
	p.LatencyMS = float64(p.latency.Microseconds()) / 1000
	if err != nil {
		p.Error = describeStatus(err, s.o.timeout)
		return p
	}
	p.Reachable = true
	p.MapVersion, p.RaftState, p.Leader = st.MapVersion, st.RaftState, st.LeaderId
	if id != "" && st.NodeId != id {
		p.Error = fmt.Sprintf("answers as node %q", st.NodeId)
		return p
	}
	p.Node = st.NodeId
	h, err := healthpb.NewHealthClient(cc).Check(rctx, &healthpb.HealthCheckRequest{})
	switch {
	case err != nil:
		p.Error = "health: " + describeStatus(err, s.o.timeout)
	case h.Status != healthpb.HealthCheckResponse_SERVING:
		p.Error = "not ready: health is " + h.Status.String()
	default:
		p.Ready = true
	}
	return p
}

// probeAll probes the nodes of m in parallel, in node id order.
func (s *session) probeAll(ctx context.Context, m *gizzard.Map) []probe {
	ids := sortedNodeIDs(m)
	out := make([]probe, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			out[i] = s.probeNode(ctx, id, m.Nodes[id].GRPCAddr)
		})
	}
	wg.Wait()
	return out
}

// nodeAddr returns the gRPC address of node id in m.
func nodeAddr(m *gizzard.Map, id string) (string, error) {
	n, ok := m.Nodes[id]
	if !ok {
		return "", fmt.Errorf("node %q is not in the map (nodes: %s)", id, strings.Join(sortedNodeIDs(m), ", "))
	}
	if n.GRPCAddr == "" {
		return "", fmt.Errorf("node %q has no gRPC address in the map", id)
	}
	return n.GRPCAddr, nil
}

// noLeaderYet reports whether err is a nameserver's refusal for want of a
// raft leader, made before anything was proposed.
func noLeaderYet(err error) bool {
	return status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "no leader elected yet")
}
