package node

import (
	"context"
	"errors"
	"slices"
	"sync"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/internal/netx"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// remotes holds one client connection per peer node address.
type remotes struct {
	sec   *netx.Security
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

var _ router.Remote = (*remotes)(nil)

func (r *remotes) conn(addr string) (*grpc.ClientConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cc, ok := r.conns[addr]; ok {
		return cc, nil
	}
	cc, err := netx.Dial(addr, r.sec.DialOption(addr, r.sec.NodePeer()))
	if err != nil {
		return nil, err
	}
	if r.conns == nil {
		r.conns = map[string]*grpc.ClientConn{}
	}
	r.conns[addr] = cc
	return cc, nil
}

// Apply sends versioned mutations to a peer's Replica service.
func (r *remotes) Apply(ctx context.Context, addr string, muts []shard.Mutation, mapVersion uint64) ([]shard.Outcome, error) {
	cc, err := r.conn(addr)
	if err != nil {
		return nil, err
	}
	req := &pb.ApplyRequest{MapVersion: mapVersion, Mutations: make([]*pb.Mutation, len(muts))}
	for i := range muts {
		req.Mutations[i] = router.ToProto(&muts[i])
	}
	resp, err := pb.NewReplicaClient(cc).Apply(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(resp.Outcomes) != len(muts) {
		return nil, errors.New("node: replica answered a different number of outcomes")
	}
	out := make([]shard.Outcome, len(muts))
	for i, o := range resp.Outcomes {
		out[i] = shard.Outcome(o)
	}
	return out, nil
}

// data returns a Data client for a peer.
func (r *remotes) data(addr string) (pb.DataClient, error) {
	cc, err := r.conn(addr)
	if err != nil {
		return nil, err
	}
	return pb.NewDataClient(cc), nil
}

func (r *remotes) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, cc := range r.conns {
		_ = cc.Close()
	}
	r.conns = nil
}

// replicaServer implements the Replica service: it applies versioned
// mutations, each naming its shard, to the local store.
type replicaServer struct {
	pb.UnimplementedReplicaServer
	n *Node
}

func (s *replicaServer) Apply(ctx context.Context, r *pb.ApplyRequest) (*pb.ApplyResponse, error) {
	muts := make([]shard.Mutation, len(r.Mutations))
	for i, p := range r.Mutations {
		if err := router.FromProto(p, &muts[i]); err != nil {
			return nil, toStatus(err)
		}
		if muts[i].Shard == "" || muts[i].Version.IsZero() {
			return nil, invalidf("mutations[%d]: a replica mutation names its shard and carries its version", i)
		}
		if _, err := s.n.hlc.Update(muts[i].Version.HLC); err != nil {
			return nil, invalidf("mutations[%d].version: %v", i, err)
		}
	}
	shards := make([]string, 0, 1)
	for i := range muts {
		if !slices.Contains(shards, muts[i].Shard) {
			shards = append(shards, muts[i].Shard)
		}
	}
	// A write routed by a map this node has not applied yet may be bound
	// for a shard the map creates here: catch up first.
	if _, err := s.n.waitMap(ctx, r.MapVersion); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	release, err := s.n.fence.admit(shards, r.MapVersion)
	if err != nil {
		return nil, toStatus(err)
	}
	outs, err := s.n.store.Apply(ctx, muts)
	release()
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.ApplyResponse{Outcomes: make([]pb.Outcome, len(outs))}
	for i, o := range outs {
		resp.Outcomes[i] = pb.Outcome(o)
	}
	return resp, nil
}
