package replication

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
	"testing"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeMsg is a delivered message: its data, subject and metadata, and
// whether the relay terminated it. Other methods are not used by decode.
type fakeMsg struct {
	jetstream.Msg
	data       []byte
	pending    uint64
	terminated int
}

func (m *fakeMsg) Data() []byte    { return m.data }
func (m *fakeMsg) Subject() string { return Subject(srcSite, "node") }
func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	if m.pending == 7 {
		return nil, errors.New("no metadata")
	}
	return &jetstream.MsgMetadata{NumPending: m.pending}, nil
}
func (m *fakeMsg) TermWithReason(string) error { m.terminated++; return nil }

// frames joins messages as a length byte then the bytes, which is how
// FuzzDecodeMessages cuts its input into a fetched batch.
func frames(msgs ...[]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = append(b, byte(len(m)))
		b = append(b, m...)
	}
	return b
}

// unframe cuts b into messages (the last may be short).
func unframe(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := min(int(b[0]), len(b)-1)
		out = append(out, b[1:1+n])
		b = b[1+n:]
	}
	return out
}

func mustMarshal(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzDecodeMessages decodes an arbitrary batch of messages fetched from a
// source's stream, as a relay path does before applying them. It must not
// panic. Every message that is not a ReplicationMessage is terminated and
// counted as an error; every other one lands once, decoded, in the group of
// its origin node, groups in order of first appearance, each in origin
// sequence order (delivery order among equal sequences).
func FuzzDecodeMessages(f *testing.F) {
	mut := &pb.Mutation{Table: "posts", Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: []byte("k"), Value: []byte("v")}}, Version: &pb.Version{Hlc: 1 << 40, Site: 1}}
	e := func(node string, seq, prev uint64) []byte {
		return mustMarshal(f, &pb.ReplicationMessage{OriginSite: srcID, OriginNode: node, Seq: seq, PrevSeq: prev, AtUnixMs: 1_780_000_000_000, Mutations: []*pb.Mutation{mut}})
	}
	hb := mustMarshal(f, &pb.ReplicationMessage{OriginSite: srcID, OriginNode: "n1", Seq: 5, PrevSeq: 5, AtUnixMs: 1_780_000_000_000, Heartbeat: true})
	f.Add(frames(e("n1", 1, 0), e("n1", 2, 1), e("n2", 1, 0), hb))
	f.Add(frames(e("n1", 3, 2), e("n1", 2, 1), e("n1", 3, 2), e("n2", 9, 8), e("n1", 1, 0)))
	f.Add(frames([]byte{0xff, 0xff}, e("n1", 1, 0), []byte{0x0a, 0x05}))
	f.Add(frames(mustMarshal(f, &pb.ReplicationMessage{OriginSite: 2, OriginNode: "n1", Seq: 1}), e("n1", 1, 0)))
	f.Add(frames([]byte{}, []byte{}))
	f.Add([]byte{200, 1, 2})
	r, err := NewRelay(RelayConfig{LocalSite: localSite, Applier: newFakeApplier()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p := newPath(r, Source{Name: srcSite, ID: srcID}, func() {})
		datas := unframe(b)
		msgs := make([]jetstream.Msg, len(datas))
		fakes := make([]*fakeMsg, len(datas))
		for i, d := range datas {
			fakes[i] = &fakeMsg{data: d, pending: uint64(i)}
			msgs[i] = fakes[i]
		}
		groups := p.decode(msgs)

		seen := make([]int, len(msgs))
		first := map[string]int{} // group key → index of its first message
		for gi, g := range groups {
			key := fmt.Sprint(g.site, "/", g.node)
			if _, dup := first[key]; dup {
				t.Fatalf("two groups of origin %s", key)
			}
			if len(g.items) == 0 {
				t.Fatalf("group %s is empty", key)
			}
			minIndex := len(msgs)
			for ii, it := range g.items {
				if it.index < 0 || it.index >= len(msgs) || it.msg != msgs[it.index] {
					t.Fatalf("item of group %s has index %d", key, it.index)
				}
				seen[it.index]++
				minIndex = min(minIndex, it.index)
				if it.rm.OriginSite != g.site || it.rm.OriginNode != g.node {
					t.Fatalf("message of %d/%s in group %s", it.rm.OriginSite, it.rm.OriginNode, key)
				}
				var want pb.ReplicationMessage
				if err := proto.Unmarshal(datas[it.index], &want); err != nil || !proto.Equal(&want, it.rm) {
					t.Fatalf("message %d decoded as %v (%v)", it.index, it.rm, err)
				}
				if wantPending := uint64(it.index); it.index != 7 && it.pending != wantPending {
					t.Fatalf("message %d: pending %d", it.index, it.pending)
				}
				if ii > 0 {
					prev := g.items[ii-1]
					if c := cmp.Compare(prev.rm.Seq, it.rm.Seq); c > 0 || c == 0 && prev.index > it.index {
						t.Fatalf("group %s: seq %d (message %d) before seq %d (message %d)", key, prev.rm.Seq, prev.index, it.rm.Seq, it.index)
					}
				}
			}
			first[key] = minIndex
			if gi > 0 && first[fmt.Sprint(groups[gi-1].site, "/", groups[gi-1].node)] > minIndex {
				t.Fatalf("groups out of order of first appearance")
			}
		}
		bad := 0
		for i, d := range datas {
			decodable := proto.Unmarshal(d, new(pb.ReplicationMessage)) == nil
			switch {
			case decodable && (seen[i] != 1 || fakes[i].terminated != 0):
				t.Fatalf("message %d: in %d groups, terminated %d times", i, seen[i], fakes[i].terminated)
			case !decodable && (seen[i] != 0 || fakes[i].terminated != 1):
				t.Fatalf("undecodable message %d: in %d groups, terminated %d times", i, seen[i], fakes[i].terminated)
			case !decodable:
				bad++
			}
		}
		if got := p.status(p.start).Errors; got != uint64(bad) {
			t.Fatalf("%d errors counted for %d undecodable messages", got, bad)
		}
	})
}

// gapMessage is how a node words a gap (node/replication.go, gapError).
func gapMessage(site, node string, wm, seq, prev uint64) string {
	return fmt.Sprintf("gap: origin %s/%s applied up to %d, next entry %d follows %d", site, node, wm, seq, prev)
}

// plainName reports whether s is a valid site or node name (gizzard's
// ValidName): 1 to 64 bytes of [A-Za-z0-9_.-].
func plainName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// FuzzParseGap reads gap refusals back from ApplyRemote's gRPC statuses,
// as a relay does. A gap as a node words it, for valid names, yields its
// watermark; any other status or message must parse without panicking,
// and is a gap exactly when it is a FailedPrecondition starting "gap:".
func FuzzParseGap(f *testing.F) {
	f.Add("site-a", "node-0", uint64(5), uint64(9), uint64(8), "gap: origin x applied up to 18446744073709551616")
	f.Add("1", "n.1", uint64(0), uint64(1), uint64(0), "gap: applied up to")
	f.Add("site a", "applied up to 7", ^uint64(0), uint64(0), uint64(0), "fenced: shard")
	f.Fuzz(func(t *testing.T, site, node string, wm, seq, prev uint64, msg string) {
		err := status.Error(codes.FailedPrecondition, gapMessage(site, node, wm, seq, prev))
		isGap, w, ok := parseGap(err)
		if !isGap {
			t.Fatalf("parseGap(%v): not a gap", err)
		}
		if plainName(site) && plainName(node) && (!ok || w != wm) {
			t.Fatalf("parseGap(%v) = %d, %v; want %d", err, w, ok, wm)
		}
		for _, c := range []codes.Code{codes.FailedPrecondition, codes.Unavailable} {
			isGap, w, ok := parseGap(status.Error(c, msg))
			if isGap != (c == codes.FailedPrecondition && strings.HasPrefix(msg, "gap:")) || ok && !strings.Contains(msg, fmt.Sprint(w)) {
				t.Fatalf("parseGap(%v %q) = %v, %d, %v", c, msg, isGap, w, ok)
			}
		}
		if isGap, _, _ := parseGap(errors.New(msg)); isGap {
			t.Fatalf("a plain error %q parsed as a gap", msg)
		}
	})
}

// FuzzNames checks the subjects, stream, consumer and key-value keys made
// of arbitrary site and node names: each name becomes exactly one valid
// token, keys split back into their tokens, a site's wildcard subject
// matches its nodes' subjects only, and the key prefix by which a node
// finds its republish requests matches its own keys only.
func FuzzNames(f *testing.F) {
	f.Add("us-east", "node-0", "eu-west", "us-east", "node-1")
	f.Add("a.b", "n*1", "c>", "a_b", "n_1")
	f.Add("", " ", "é", "_", "__")
	f.Add("site", "a.b", "x", "site.a", "b")
	f.Fuzz(func(t *testing.T, site, node, applying, site2, node2 string) {
		for _, s := range []string{site, node, applying} {
			tok := Token(s)
			if tok == "" || len(tok) != max(len(s), 1) || Token(tok) != tok || (tok == s) != (s != "" && validToken(s)) || !validToken(tok) {
				t.Fatalf("Token(%q) = %q", s, tok)
			}
		}
		subj := Subject(site, node)
		parts := strings.Split(subj, ".")
		if len(parts) != 4 || parts[0] != "aviary" || parts[1] != "repl" || parts[2] != Token(site) || parts[3] != Token(node) {
			t.Fatalf("Subject(%q, %q) = %q", site, node, subj)
		}
		all := SubjectAll(site)
		if !strings.HasSuffix(all, ".>") || !strings.HasPrefix(subj, strings.TrimSuffix(all, ">")) {
			t.Fatalf("SubjectAll(%q) = %q does not match %q", site, all, subj)
		}
		if Token(site2) != Token(site) && strings.HasPrefix(Subject(site2, node2), strings.TrimSuffix(all, ">")) {
			t.Fatalf("SubjectAll(%q) = %q matches site %q's subject %q", site, all, site2, Subject(site2, node2))
		}
		for _, key := range []string{WatermarkKey(site, node, applying), RepublishKey(site, node, applying)} {
			if got := strings.Split(key, "."); len(got) != 3 || got[0] != Token(site) || got[1] != Token(node) || got[2] != Token(applying) {
				t.Fatalf("key %q of (%q, %q, %q) splits as %q", key, site, node, applying, got)
			}
		}
		// node/replication.go republishRequest finds its keys by prefix.
		prefix := Token(site) + "." + Token(node) + "."
		if !strings.HasPrefix(RepublishKey(site, node, applying), prefix) {
			t.Fatalf("republish key %q lacks prefix %q", RepublishKey(site, node, applying), prefix)
		}
		if (Token(site2) != Token(site) || Token(node2) != Token(node)) && strings.HasPrefix(RepublishKey(site2, node2, applying), prefix) {
			t.Fatalf("republish key %q of (%q, %q) has the prefix %q of (%q, %q)", RepublishKey(site2, node2, applying), site2, node2, prefix, site, node)
		}
		for _, name := range []string{StreamName(site), ConsumerName(applying)} {
			if strings.ContainsAny(name, ".*> \t\r\n") || name == "" {
				t.Fatalf("invalid NATS name %q", name)
			}
		}
	})
}

func validToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
