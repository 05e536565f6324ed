package router

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aviarydb/aviary/gizzard"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FencedError is a node's refusal of a write routed by a map older than the
// last change that moved or retired its shard (see gizzard.Map.Fence). The
// router routes such a write again by a map at least as new as Fence.
type FencedError struct {
	Shard string
	// Stamp is the map version the write was routed by; Fence the version
	// of the change that moved the shard.
	Stamp, Fence uint64
}

const fencedPrefix = "fenced:"

func (e *FencedError) Error() string {
	return fmt.Sprintf("%s shard %q moved at map version %d; the write was routed by version %d and must be routed again", fencedPrefix, e.Shard, e.Fence, e.Stamp)
}

// GRPCStatus makes a FencedError a FailedPrecondition status whose message
// ParseFenced reads back.
func (e *FencedError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

// ParseFenced returns the FencedError err is or carries, also across gRPC.
func ParseFenced(err error) (*FencedError, bool) {
	var fe *FencedError
	if errors.As(err, &fe) {
		return fe, true
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition || !strings.HasPrefix(st.Message(), fencedPrefix) {
		return nil, false
	}
	fe = &FencedError{}
	if _, err := fmt.Sscanf(st.Message(), fencedPrefix+" shard %q moved at map version %d; the write was routed by version %d", &fe.Shard, &fe.Fence, &fe.Stamp); err != nil {
		return nil, false
	}
	return fe, true
}

// waitMap returns a map at least at version v, waiting for this node to
// learn it until ctx ends.
func (r *Router) waitMap(ctx context.Context, v uint64) (*gizzard.Map, error) {
	if r.cfg.WaitMap != nil {
		return r.cfg.WaitMap(ctx, v)
	}
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if m := r.cfg.Map(); m.Version >= v {
			return m, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}
