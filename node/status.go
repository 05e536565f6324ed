package node

import (
	"context"
	"errors"

	"github.com/aviarydb/aviary/api/client"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// statusCodes maps sentinel errors to gRPC codes, first match wins. Errors
// are matched with errors.Is, so wrapped errors map too.
var statusCodes = []struct {
	err  error
	code codes.Code
}{
	{shard.ErrInvalid, codes.InvalidArgument},
	{shard.ErrWrongKind, codes.InvalidArgument},
	{ids.ErrFarFuture, codes.InvalidArgument},
	{ids.ErrInvalidID, codes.InvalidArgument},
	{ids.ErrInvalidMonth, codes.InvalidArgument},
	{shard.ErrNotFound, codes.NotFound},
	{shard.ErrTableNotFound, codes.NotFound},
	{shard.ErrShardNotFound, codes.NotFound},
	{shard.ErrExists, codes.AlreadyExists},
	{shard.ErrTooLarge, codes.ResourceExhausted},
	{shard.ErrOutOfRange, codes.OutOfRange},
	{shard.ErrClosed, codes.Unavailable},
	{gizzard.ErrNoTable, codes.NotFound},
	{router.ErrNoRoute, codes.FailedPrecondition},
	{router.ErrRefused, codes.FailedPrecondition},
	{router.ErrNotEnoughReplicas, codes.Unavailable},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// toStatus translates an error into a gRPC status error carrying its
// message. Errors that match no sentinel are Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if se, ok := errors.AsType[*router.SiteError](err); ok {
		return siteStatus(se)
	}
	for _, m := range statusCodes {
		if errors.Is(err, m.err) {
			return status.Error(m.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}

func invalidf(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// siteStatus is the status of a write refused because the site is not
// active: FailedPrecondition, naming the site to use, with the ErrorInfo
// client.ParseSiteRefusal reads.
func siteStatus(se *router.SiteError) error {
	st := status.New(codes.FailedPrecondition, se.Error())
	info := &errdetails.ErrorInfo{Reason: client.SiteNotActiveReason, Domain: "aviary", Metadata: map[string]string{
		"site": se.Site, "state": string(se.State), "use": se.Use,
	}}
	if d, err := st.WithDetails(info); err == nil {
		st = d
	}
	return st.Err()
}
