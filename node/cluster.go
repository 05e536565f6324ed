package node

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/gizzard/nameserver"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// defaultShardName names the i-th shard of a new site's layout.
func defaultShardName(i int) string { return fmt.Sprintf("default-%03d", i) }

// seedChange is the layout of a new one-node site: this node, the default
// tables, and n shard trees (a Replicating root over one physical shard
// here), each table forwarded evenly over them by hash.
func (n *Node) seedChange() gizzard.Change {
	c := gizzard.Change{Who: "node " + n.cfg.NodeID, From: n.GRPCAddr(), Steps: []gizzard.Step{{
		Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: n.cfg.NodeID, GRPCAddr: n.GRPCAddr(), RaftAddr: n.ns.Addr(), Timeline: n.cfg.Timeline},
	}}}
	c.Steps = append(c.Steps, gizzard.Step{Op: gizzard.OpAddSite, Site: &gizzard.Site{
		Name: n.cfg.SiteName, ID: n.cfg.SiteID, NATSURL: n.repl.url(), State: gizzard.SiteActive,
	}})
	for _, t := range n.cfg.Tables {
		c.Steps = append(c.Steps, gizzard.Step{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: t.Name, Kind: gizzard.TableKind(t.Kind.String())}})
	}
	step := math.MaxUint64/uint64(n.cfg.DefaultShards) + 1
	for i := range n.cfg.DefaultShards {
		leaf, root := defaultShardName(i), fmt.Sprintf("rep-%03d", i)
		c.Steps = append(c.Steps,
			gizzard.Step{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: leaf, Kind: gizzard.KindPhysical, Node: n.cfg.NodeID}},
			gizzard.Step{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: root, Kind: gizzard.KindReplicating, Children: []gizzard.Link{{Child: leaf, Weight: 1}}}},
		)
		for _, t := range n.cfg.Tables {
			c.Steps = append(c.Steps, gizzard.Step{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: t.Name, Base: uint64(i) * step, Root: root}})
		}
	}
	return c
}

// membership makes this node part of its site: a new site seeds its map;
// a joining node asks the site (through cfg.Join) to add it. It retries
// until it succeeds or ctx ends.
func (n *Node) membership(ctx context.Context) error {
	backoff := 50 * time.Millisecond
	for {
		err := n.tryMembership(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		n.log.Info("not yet part of the site; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// self is this node as the map should list it.
func (n *Node) self() gizzard.Node {
	return gizzard.Node{ID: n.cfg.NodeID, GRPCAddr: n.GRPCAddr(), RaftAddr: n.ns.Addr(), Timeline: n.cfg.Timeline}
}

func (n *Node) tryMembership(ctx context.Context) error {
	m := n.ns.Map()
	if cur, ok := m.Nodes[n.cfg.NodeID]; ok {
		if cur == n.self() {
			return nil
		}
		// Restarted on other addresses: the site must learn the new ones
		// (the raft configuration and the map) before it can reach us.
		return n.rejoin(ctx, m, cur)
	}
	if n.cfg.Join == "" {
		if err := n.ns.WaitLeader(ctx); err != nil {
			return err
		}
		if !n.ns.IsLeader() {
			return errors.New("waiting to lead the new site")
		}
		if n.ns.Map().Version > 0 {
			return fmt.Errorf("the site's map (version %d) does not list node %q: start it with --join", n.ns.Map().Version, n.cfg.NodeID)
		}
		v, err := n.ns.Propose(ctx, n.seedChange())
		if err != nil {
			return err
		}
		n.log.Info("new site seeded", "map_version", v, "shards", n.cfg.DefaultShards, "tables", len(n.cfg.Tables))
		return nil
	}
	if err := n.joinVia(ctx, n.cfg.Join); err != nil {
		return err
	}
	n.log.Info("joined the site", "via", n.cfg.Join)
	return nil
}

// joinVia asks the site, through the node at addr, to add this node or to
// update its addresses.
func (n *Node) joinVia(ctx context.Context, addr string) error {
	cli, err := n.remotes.conn(addr)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = pb.NewNameserverClient(cli).Join(cctx, &pb.JoinRequest{NodeId: n.cfg.NodeID, RaftAddr: n.ns.Addr(), GrpcAddr: n.GRPCAddr(), Timeline: n.cfg.Timeline})
	if err != nil {
		return fmt.Errorf("join via %s: %w", addr, err)
	}
	return nil
}

// rejoin updates this node's addresses in the site: directly when it
// leads, else through --join or any other node of the map.
func (n *Node) rejoin(ctx context.Context, m *gizzard.Map, old gizzard.Node) error {
	if n.ns.IsLeader() {
		if err := n.ns.AddMember(ctx, n.cfg.NodeID, n.ns.Addr()); err != nil {
			return err
		}
		self := n.self()
		v, err := n.ns.Propose(ctx, gizzard.Change{Who: "node " + n.cfg.NodeID, From: self.GRPCAddr, Steps: []gizzard.Step{{Op: gizzard.OpUpdateNode, Node: &self}}})
		if err != nil {
			return err
		}
		n.log.Info("node addresses updated", "map_version", v, "grpc", self.GRPCAddr, "raft", self.RaftAddr, "was_grpc", old.GRPCAddr, "was_raft", old.RaftAddr)
		return nil
	}
	var via []string
	if n.cfg.Join != "" {
		via = append(via, n.cfg.Join)
	}
	for _, id := range slices.Sorted(maps.Keys(m.Nodes)) {
		if id != n.cfg.NodeID {
			via = append(via, m.Nodes[id].GRPCAddr)
		}
	}
	var errs []error
	for _, addr := range via {
		err := n.joinVia(ctx, addr)
		if err == nil {
			n.log.Info("asked the site to update this node's addresses", "via", addr, "was_grpc", old.GRPCAddr, "was_raft", old.RaftAddr)
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("cannot update this node's addresses: %w", errors.Join(errs...))
}

// reconcile follows the map: it creates the tables and the physical
// shards the map assigns to this node, and records the version it routes
// with. It marks the node ready once the map lists it.
func (n *Node) reconcile(ctx context.Context) {
	var after uint64
	for {
		m, err := n.ns.Wait(ctx, after)
		if err != nil {
			return
		}
		if err := n.applyMap(ctx, m); err != nil {
			// Not applied: try again (this map or a newer one) shortly.
			n.log.Error("cannot apply the shard map; retrying", "map_version", m.Version, "err", err)
			t := time.NewTimer(time.Second)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		after = m.Version
		n.fence.install(m)
		n.router.Installed(m)
		if err := n.timelines.SetMembers(timelineMembers(m, n.cfg.SiteID)); err != nil {
			n.log.Error("cannot place timelines on the map's timeline nodes", "map_version", m.Version, "err", err)
		}
		n.routedVersion.Store(m.Version)
		if cur, ok := m.Nodes[n.cfg.NodeID]; ok && cur == n.self() && !n.ready.Load() {
			n.ready.Store(true)
			close(n.readyCh)
			n.health.SetServingStatus("", healthServing)
			n.log.Info("node ready", "map_version", m.Version, "shards_here", len(m.LeavesOnNode(n.cfg.NodeID)))
		}
	}
}

func (n *Node) applyMap(ctx context.Context, m *gizzard.Map) error {
	for _, name := range slices.Sorted(maps.Keys(m.Tables)) {
		t := m.Tables[name]
		kind := shard.KindContent
		if t.Kind == "index" {
			kind = shard.KindIndex
		}
		if err := n.store.CreateTable(ctx, t.Name, kind); err != nil {
			return err
		}
	}
	have := map[string]bool{}
	for _, sh := range n.store.Shards() {
		have[sh.Name] = true
	}
	for _, id := range m.LeavesOnNode(n.cfg.NodeID) {
		if have[id] {
			continue
		}
		if at, err := n.droppedAt(id); err != nil {
			return err
		} else if at >= m.Version {
			continue // an old map, replayed: the shard was dropped since
		}
		if _, err := n.store.CreateShard(ctx, id); err != nil && !errors.Is(err, shard.ErrExists) {
			return err
		}
		n.log.Info("physical shard created from the map", "shard", id, "map_version", m.Version)
	}
	return nil
}

// markDropped records durably that shard id was dropped when the map was
// at version v.
func (n *Node) markDropped(ctx context.Context, id string, v uint64) error {
	if _, err := n.store.ImportPage(ctx, nil, droppedKey(id), binary.BigEndian.AppendUint64(nil, v)); err != nil {
		return err
	}
	return n.store.Sync(ctx)
}

// droppedAt returns the map version shard id was last dropped at, or 0.
func (n *Node) droppedAt(id string) (uint64, error) {
	b, ok, err := n.store.ImportState(droppedKey(id))
	if err != nil || !ok || len(b) != 8 {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

func droppedKey(id string) string { return "dropped/" + id }

// nameserverServer implements the Nameserver service.
type nameserverServer struct {
	pb.UnimplementedNameserverServer
	n *Node
}

func mapResponse(m *gizzard.Map) (*pb.MapResponse, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode map: %v", err)
	}
	return &pb.MapResponse{Version: m.Version, MapJson: b}, nil
}

func (s *nameserverServer) GetMap(ctx context.Context, _ *pb.GetMapRequest) (*pb.MapResponse, error) {
	return mapResponse(s.n.ns.Map())
}

func (s *nameserverServer) Watch(r *pb.WatchRequest, stream pb.Nameserver_WatchServer) error {
	after := r.AfterVersion
	for {
		m, err := s.n.ns.Wait(stream.Context(), after)
		if err != nil {
			return status.FromContextError(err).Err()
		}
		resp, err := mapResponse(m)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		after = m.Version
	}
}

// leaderClient returns a Nameserver client for the leader, or nil if this
// node leads.
func (s *nameserverServer) leaderClient() (pb.NameserverClient, error) {
	if s.n.ns.IsLeader() {
		return nil, nil
	}
	id, _ := s.n.ns.Leader()
	if id == "" {
		return nil, status.Error(codes.Unavailable, "nameserver: no leader elected yet; retry")
	}
	node, ok := s.n.ns.Map().Nodes[id]
	if !ok {
		return nil, status.Errorf(codes.Unavailable, "nameserver: leader %q is not in the map yet; retry", id)
	}
	cc, err := s.n.remotes.conn(node.GRPCAddr)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "nameserver: leader %s: %v", node.GRPCAddr, err)
	}
	return pb.NewNameserverClient(cc), nil
}

func (s *nameserverServer) Propose(ctx context.Context, r *pb.ProposeRequest) (*pb.ProposeResponse, error) {
	var c gizzard.Change
	if err := json.Unmarshal(r.ChangeJson, &c); err != nil {
		return nil, invalidf("change_json: %v", err)
	}
	c.Who = stampWho(ctx, c.Who)
	if c.From == "" {
		// Record the client's address, not that of a node forwarding it.
		if p, ok := peer.FromContext(ctx); ok {
			c.From = p.Addr.String()
		}
	}
	if lc, err := s.leaderClient(); err != nil || lc != nil {
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(c)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode change: %v", err)
		}
		return lc.Propose(ctx, &pb.ProposeRequest{ChangeJson: b})
	}
	v, err := s.n.ns.Propose(ctx, c)
	if err != nil {
		return nil, nsStatus(err)
	}
	s.n.log.Info("shard map changed", "version", v, "who", c.Who, "from", c.From)
	return &pb.ProposeResponse{Version: v}, nil
}

func nsStatus(err error) error {
	switch {
	case errors.Is(err, gizzard.ErrVersionMoved):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, gizzard.ErrInvalidChange), errors.Is(err, gizzard.ErrInvalidMap):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, nameserver.ErrNotLeader):
		return status.Error(codes.Unavailable, err.Error())
	}
	return toStatus(err)
}

func (s *nameserverServer) Join(ctx context.Context, r *pb.JoinRequest) (*pb.JoinResponse, error) {
	if lc, err := s.leaderClient(); err != nil || lc != nil {
		if err != nil {
			return nil, err
		}
		return lc.Join(ctx, r)
	}
	if err := gizzard.ValidName(r.NodeId); err != nil {
		return nil, invalidf("node_id: %v", err)
	}
	if err := s.n.ns.AddMember(ctx, r.NodeId, r.RaftAddr); err != nil {
		return nil, nsStatus(err)
	}
	m := s.n.ns.Map()
	node := gizzard.Node{ID: r.NodeId, GRPCAddr: r.GrpcAddr, RaftAddr: r.RaftAddr, Timeline: r.Timeline}
	op := gizzard.OpAddNode
	if cur, ok := m.Nodes[r.NodeId]; ok {
		if cur == node {
			return &pb.JoinResponse{Version: m.Version}, nil
		}
		op = gizzard.OpUpdateNode // the node restarted on other addresses
	}
	from := ""
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}
	v, err := s.n.ns.Propose(ctx, gizzard.Change{Who: "node " + r.NodeId, From: from, IfVersion: m.Version, Steps: []gizzard.Step{{Op: op, Node: &node}}})
	if err != nil {
		return nil, nsStatus(err)
	}
	s.n.log.Info("node joined the site", "node", r.NodeId, "grpc", r.GrpcAddr, "raft", r.RaftAddr, "map_version", v)
	return &pb.JoinResponse{Version: v}, nil
}

func (s *nameserverServer) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	id, addr := s.n.ns.Leader()
	voters, _ := s.n.ns.Voters()
	return &pb.StatusResponse{
		NodeId:         s.n.cfg.NodeID,
		GrpcAddr:       s.n.GRPCAddr(),
		MapVersion:     s.n.routedVersion.Load(),
		SiteName:       s.n.cfg.SiteName,
		SiteId:         s.n.cfg.SiteID,
		RaftState:      s.n.ns.State(),
		Ready:          s.n.ready.Load(),
		LeaderId:       id,
		LeaderRaftAddr: addr,
		Voters:         voters,
	}, nil
}
