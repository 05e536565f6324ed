package client

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SiteNotActiveReason is the ErrorInfo reason of the FailedPrecondition
// status with which a site that is not active (draining, fenced or
// recovering) refuses its clients' writes. The ErrorInfo's metadata holds
// "site" (the refusing site), "state" and "use" (the site to write to
// instead; empty when the map names none).
const SiteNotActiveReason = "SITE_NOT_ACTIVE"

// SiteRefusal is what a SITE_NOT_ACTIVE status says.
type SiteRefusal struct {
	Site, State, Use string
}

// ParseSiteRefusal reports whether err is a site's refusal of a write
// because it is not active, and what it said.
func ParseSiteRefusal(err error) (SiteRefusal, bool) {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition {
		return SiteRefusal{}, false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Reason == SiteNotActiveReason {
			md := info.GetMetadata()
			return SiteRefusal{Site: md["site"], State: md["state"], Use: md["use"]}, true
		}
	}
	return SiteRefusal{}, false
}
