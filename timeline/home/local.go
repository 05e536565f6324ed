package home

import (
	"context"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"google.golang.org/grpc"
)

// localClient calls this node's own replica methods without gRPC. Only
// the unary replica methods are provided; the embedded nil client makes
// calling any other a programming error.
type localClient struct {
	pb.TimelinesClient
	s *Service
}

var _ pb.TimelinesClient = localClient{}

func (l localClient) ReplicaPush(ctx context.Context, r *pb.ReplicaPushRequest, _ ...grpc.CallOption) (*pb.ReplicaPushResponse, error) {
	return l.s.ReplicaPush(ctx, r)
}

func (l localClient) ReplicaRead(ctx context.Context, r *pb.ReplicaReadRequest, _ ...grpc.CallOption) (*pb.ReplicaReadResponse, error) {
	return l.s.ReplicaRead(ctx, r)
}

func (l localClient) ReplicaRemove(ctx context.Context, r *pb.ReplicaRemoveRequest, _ ...grpc.CallOption) (*pb.ReplicaRemoveResponse, error) {
	return l.s.ReplicaRemove(ctx, r)
}

func (l localClient) ReplicaMerge(ctx context.Context, r *pb.ReplicaMergeRequest, _ ...grpc.CallOption) (*pb.ReplicaMergeResponse, error) {
	return l.s.ReplicaMerge(ctx, r)
}

func (l localClient) ReplicaReserve(ctx context.Context, r *pb.ReplicaReserveRequest, _ ...grpc.CallOption) (*pb.ReplicaReserveResponse, error) {
	return l.s.ReplicaReserve(ctx, r)
}
