// Package nameserver replicates a site's shard map (a gizzard.Map) with
// hashicorp/raft: a durable log (bbolt), snapshots on disk, and a TCP
// transport built by netx. Changes are proposed on the leader, checked
// against the current map before they are committed, and applied by every
// voter in log order; reads are local and lock-free; Wait lets routers
// follow each new version.
package nameserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Errors.
var (
	// ErrNotLeader is returned by leader-only operations on a follower; the
	// error's text names the leader when one is known.
	ErrNotLeader = errors.New("nameserver: not the leader")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("nameserver: closed")
)

// Config configures a Server.
type Config struct {
	// NodeID is this voter's raft id; it is also the node's id in the map.
	NodeID string
	// RaftAddr is the address the raft transport listens on; the address
	// peers dial is the bound one (so port 0 works).
	RaftAddr string
	// Dir holds the raft log (raft.db) and snapshots.
	Dir string
	// Bootstrap makes a new single-voter cluster when Dir holds no raft
	// state. Nodes that join an existing site leave it false.
	Bootstrap bool
	// Logger receives logs. Default: discards.
	Logger *slog.Logger
	// Clock stamps changes. Default ids.SystemClock.
	Clock ids.Clock
	// ApplyTimeout bounds a proposal's wait for commit. Default 10s.
	ApplyTimeout time.Duration
	// Fast selects short raft timeouts (heartbeat and election 500ms)
	// instead of raft's defaults (1s), for local sites and tests.
	Fast bool
	// Security secures raft's links: with TLS, both ends of every
	// connection must be nodes of this site. Nil: plaintext.
	Security *netx.Security
}

// Server is one voter (or learner) of a site's nameserver.
type Server struct {
	cfg       Config
	log       *slog.Logger
	fsm       *fsm
	raft      *raft.Raft
	transport *raft.NetworkTransport
	store     *raftboltdb.BoltStore
	addr      string
}

// Open starts the raft node. With Bootstrap and no existing state it forms
// a one-voter cluster and becomes its leader.
func Open(ctx context.Context, cfg Config) (_ *Server, err error) {
	if cfg.NodeID == "" || cfg.RaftAddr == "" || cfg.Dir == "" {
		return nil, fmt.Errorf("nameserver: node id, raft address and directory are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = ids.SystemClock{}
	}
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = 10 * time.Second
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("nameserver: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, fsm: newFSM()}
	var closers []func()
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	s.store, err = raftboltdb.NewBoltStore(filepath.Join(cfg.Dir, "raft.db"))
	if err != nil {
		return nil, fmt.Errorf("nameserver: open raft log: %w", err)
	}
	closers = append(closers, func() { _ = s.store.Close() })
	hl := newHCLog(cfg.Logger)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hl)
	if err != nil {
		return nil, fmt.Errorf("nameserver: open snapshots: %w", err)
	}
	ln, err := netx.Listen(ctx, cfg.RaftAddr)
	if err != nil {
		return nil, fmt.Errorf("nameserver: %w", err)
	}
	s.addr = ln.Addr().String()
	s.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  streamLayer{Listener: advertised{cfg.Security.WrapListener(ln, cfg.Security.NodePeer())}, sec: cfg.Security},
		MaxPool: 3,
		Timeout: 5 * time.Second,
		Logger:  hl,
	})
	closers = append(closers, func() { _ = s.transport.Close() })

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hl
	rc.SnapshotThreshold = 1024
	if cfg.Fast {
		rc.HeartbeatTimeout = 500 * time.Millisecond
		rc.ElectionTimeout = 500 * time.Millisecond
		rc.LeaderLeaseTimeout = 250 * time.Millisecond
		rc.CommitTimeout = 20 * time.Millisecond
	}
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(s.store, s.store, snaps)
		if err != nil {
			return nil, fmt.Errorf("nameserver: %w", err)
		}
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: raft.ServerAddress(s.addr)}}}
			if err := raft.BootstrapCluster(rc, s.store, s.store, snaps, s.transport, conf); err != nil {
				return nil, fmt.Errorf("nameserver: bootstrap: %w", err)
			}
			s.log.Info("nameserver bootstrapped a new site", "node", cfg.NodeID, "raft", s.addr)
		}
	}
	s.raft, err = raft.NewRaft(rc, s.fsm, s.store, s.store, snaps, s.transport)
	if err != nil {
		return nil, fmt.Errorf("nameserver: start raft: %w", err)
	}
	return s, nil
}

// advertised makes the listener report its bound address, which raft
// advertises to peers.
type advertised struct{ net.Listener }

// Addr is the bound raft address.
func (s *Server) Addr() string { return s.addr }

// Map returns the current shard map. It must not be modified.
func (s *Server) Map() *gizzard.Map {
	m, _ := s.fsm.current()
	return m
}

// Wait returns the first map with a version above after, waiting for it
// until ctx ends.
func (s *Server) Wait(ctx context.Context, after uint64) (*gizzard.Map, error) {
	for {
		m, changed := s.fsm.current()
		if m.Version > after {
			return m, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}

// IsLeader reports whether this voter is the leader.
func (s *Server) IsLeader() bool { return s.raft.State() == raft.Leader }

// Leader returns the leader's raft id and address ("" if unknown).
func (s *Server) Leader() (id, addr string) {
	a, i := s.raft.LeaderWithID()
	return string(i), string(a)
}

// State is this voter's raft state ("Leader", "Follower", ...).
func (s *Server) State() string { return s.raft.State().String() }

// WaitLeader waits until some voter is leader.
func (s *Server) WaitLeader(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if id, _ := s.Leader(); id != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nameserver: no leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

func (s *Server) notLeader() error {
	id, addr := s.Leader()
	if id == "" {
		return fmt.Errorf("%w: no leader elected yet", ErrNotLeader)
	}
	return fmt.Errorf("%w: the leader is %s at %s", ErrNotLeader, id, addr)
}

// Propose checks a change against the current map and, if it is valid,
// commits it through raft and returns the new map version. It must run on
// the leader (ErrNotLeader otherwise). Change.At is set here if unset.
func (s *Server) Propose(ctx context.Context, c gizzard.Change) (uint64, error) {
	if !s.IsLeader() {
		return 0, s.notLeader()
	}
	if c.At.IsZero() {
		c.At = s.cfg.Clock.Now().UTC()
	}
	if err := s.Map().Check(c); err != nil {
		return 0, err
	}
	data, err := json.Marshal(command{Change: c})
	if err != nil {
		return 0, fmt.Errorf("nameserver: encode change: %w", err)
	}
	timeout := s.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	f := s.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, fmt.Errorf("%w: %w", s.notLeader(), err)
		}
		return 0, fmt.Errorf("nameserver: commit: %w", err)
	}
	r, _ := f.Response().(applyResult)
	if r.err != nil {
		return 0, r.err
	}
	return r.version, nil
}

// MaxVoters is the number of raft voters a site keeps; nodes that join
// beyond it replicate the map as non-voters (reads stay local everywhere,
// elections and commits stay fast).
const MaxVoters = 3

// AddMember adds a node to the site's raft configuration (leader only): as
// a voter while the site has fewer than MaxVoters, else as a non-voter. It
// is idempotent for a node already present.
func (s *Server) AddMember(ctx context.Context, id, addr string) error {
	if !s.IsLeader() {
		return s.notLeader()
	}
	timeout := s.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("nameserver: %w", err)
	}
	voters := 0
	for _, sv := range f.Configuration().Servers {
		if sv.ID == raft.ServerID(id) {
			if sv.Address == raft.ServerAddress(addr) {
				return nil
			}
			break
		}
		if sv.Suffrage == raft.Voter {
			voters++
		}
	}
	var fut raft.IndexFuture
	kind := "voter"
	if voters < MaxVoters {
		fut = s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
	} else {
		kind = "non-voter"
		fut = s.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
	}
	if err := fut.Error(); err != nil {
		return fmt.Errorf("nameserver: add %s %s at %s: %w", kind, id, addr, err)
	}
	s.log.Info("raft member added", "node", id, "raft", addr, "as", kind)
	return nil
}

// RemoveServer removes a node from the raft configuration (leader only).
func (s *Server) RemoveServer(ctx context.Context, id string) error {
	if !s.IsLeader() {
		return s.notLeader()
	}
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, s.cfg.ApplyTimeout).Error(); err != nil {
		return fmt.Errorf("nameserver: remove %s: %w", id, err)
	}
	return nil
}

// Voters lists the raft configuration's servers as id → address.
func (s *Server) Voters() (map[string]string, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, sv := range f.Configuration().Servers {
		out[string(sv.ID)] = string(sv.Address)
	}
	return out, nil
}

// Close stops raft and closes the log and transport.
func (s *Server) Close() error {
	err := s.raft.Shutdown().Error()
	s.transport.CloseStreams()
	err = errors.Join(err, s.transport.Close(), s.store.Close())
	if err != nil {
		return fmt.Errorf("nameserver: close: %w", err)
	}
	return nil
}
