package client

import (
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// refusal builds a site's refusal as a node does (node/status.go,
// siteStatus), carried over the wire: the status as its proto bytes.
func refusal(tb testing.TB, site, state, use string) ([]byte, bool) {
	st := status.New(codes.FailedPrecondition, "site "+site+" is "+state)
	d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: SiteNotActiveReason, Domain: "aviary", Metadata: map[string]string{
		"site": site, "state": state, "use": use,
	}})
	if err != nil {
		return nil, false // not valid UTF-8: the node sends the status without details
	}
	b, err := proto.Marshal(d.Proto())
	if err != nil {
		tb.Fatal(err)
	}
	return b, true
}

// FuzzParseSiteRefusal reads a site's refusal from a gRPC status as a
// client receives it: status proto bytes, details included. It must never
// panic. A refusal as a node words it reads back exactly; any other
// status reads as a refusal only if it is a FailedPrecondition with a
// SITE_NOT_ACTIVE ErrorInfo.
func FuzzParseSiteRefusal(f *testing.F) {
	for _, c := range [][3]string{{"east", "draining", "west"}, {"west", "fenced", ""}, {"", "", ""}} {
		b, _ := refusal(f, c[0], c[1], c[2])
		f.Add(c[0], c[1], c[2], b)
	}
	other, _ := anypb.New(&errdetails.ErrorInfo{Reason: "OTHER"})
	b, _ := proto.Marshal(&spb.Status{Code: int32(codes.FailedPrecondition), Message: "x", Details: []*anypb.Any{other, {TypeUrl: "type.googleapis.com/google.rpc.ErrorInfo", Value: []byte{0xff}}}})
	f.Add("a", "b", "c", b)
	b, _ = proto.Marshal(&spb.Status{Code: int32(codes.Unavailable), Message: "down"})
	f.Add("a", "b", "c", b)
	f.Add("\xff", "fenced", "x", []byte{0x08, 0x09})
	f.Fuzz(func(t *testing.T, site, state, use string, raw []byte) {
		if b, ok := refusal(t, site, state, use); ok {
			var p spb.Status
			if err := proto.Unmarshal(b, &p); err != nil {
				t.Fatal(err)
			}
			got, ok := ParseSiteRefusal(status.FromProto(&p).Err())
			if want := (SiteRefusal{Site: site, State: state, Use: use}); !ok || got != want {
				t.Fatalf("ParseSiteRefusal = %+v, %v; want %+v", got, ok, want)
			}
		}
		var p spb.Status
		if proto.Unmarshal(raw, &p) != nil {
			return
		}
		st := status.FromProto(&p)
		_, ok := ParseSiteRefusal(st.Err())
		if !ok {
			return
		}
		if st.Code() != codes.FailedPrecondition {
			t.Fatalf("a %v status read as a refusal", st.Code())
		}
		found := false
		for _, d := range st.Details() {
			if info, isInfo := d.(*errdetails.ErrorInfo); isInfo && info.Reason == SiteNotActiveReason {
				found = true
			}
		}
		if !found {
			t.Fatalf("a status without a %s ErrorInfo read as a refusal: %v", SiteNotActiveReason, st.Proto())
		}
	})
}
