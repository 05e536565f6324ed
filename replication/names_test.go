package replication

import (
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestToken(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"us-east", "us-east"},
		{"Site_01", "Site_01"},
		{"a.b", "a_b"},
		{"a b*c>d", "a_b_c_d"},
		{"eu/west", "eu_west"},
		{"é", "__"}, // two bytes
		{"", "_"},
	} {
		if got := Token(tc.in); got != tc.want {
			t.Errorf("Token(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{StreamName("us-east"), "AVIARY_us-east"},
		{StreamName("a.b"), "AVIARY_a_b"},
		{Subject("us-east", "node-0"), "aviary.repl.us-east.node-0"},
		{Subject("a.b", "n*1"), "aviary.repl.a_b.n_1"},
		{SubjectAll("us-east"), "aviary.repl.us-east.>"},
		{SubjectAll("a b"), "aviary.repl.a_b.>"},
		{WatermarkBucket, "AVIARY_WM"},
		{RepublishBucket, "AVIARY_REPUBLISH"},
		{WatermarkKey("us-east", "node-0", "eu-west"), "us-east.node-0.eu-west"},
		{WatermarkKey("a.b", "n 1", "c>"), "a_b.n_1.c_"},
		{RepublishKey("us-east", "node-0", "eu-west"), "us-east.node-0.eu-west"},
		{ConsumerName("eu-west"), "relay-eu-west"},
		{ConsumerName("eu.west"), "relay-eu_west"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestParseGap(t *testing.T) {
	for _, tc := range []struct {
		err       error
		isGap, ok bool
		w         uint64
	}{
		{status.Error(codes.FailedPrecondition, "gap: origin us-east/node-0 applied up to 41, next entry 45 follows 44"), true, true, 41},
		{status.Error(codes.FailedPrecondition, "gap: origin us-east/node-0 applied up to 0, next entry 3 follows 2"), true, true, 0},
		{status.Error(codes.FailedPrecondition, "gap: something else"), true, false, 0},
		{status.Error(codes.FailedPrecondition, "shard map version 3 is stale"), false, false, 0},
		{status.Error(codes.Unavailable, "gap: origin a/b applied up to 1, next entry 3 follows 2"), false, false, 0},
		{errors.New("gap: origin a/b applied up to 1, next entry 3 follows 2"), false, false, 0},
	} {
		isGap, w, ok := parseGap(tc.err)
		if isGap != tc.isGap || ok != tc.ok || w != tc.w {
			t.Errorf("parseGap(%v) = %v, %d, %v; want %v, %d, %v", tc.err, isGap, w, ok, tc.isGap, tc.w, tc.ok)
		}
	}
}
