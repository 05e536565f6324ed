package ops

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/shard"
)

// Verification compares a migration's source and destination by digests
// over key spans (each table's content in contentSplits spans, its index
// in one). A span whose digests differ is read on both sides and compared
// record by record. Writes keep flowing meanwhile, so a difference is only
// counted when every version involved is older than the verification's
// start (a newer one is in flight to the other side) and it survives
// verifyAttempts rounds, a second apart (a replica job may still bring it).
const (
	contentSplits  = 16
	verifyAttempts = 5
	maxDiffKeys    = 20
)

// span is a shard-relative key span [Start, End) of one table.
type span struct {
	Table      string `json:"table"`
	Start, End []byte `json:"-"`
}

func (sp span) String() string {
	return fmt.Sprintf("%s [%s, %s)", sp.Table, shard.FormatKey(sp.Start), shard.FormatKey(sp.End))
}

// verifySpans cuts every table of m into spans.
func verifySpans(m *gizzard.Map) []span {
	var out []span
	for _, t := range sortedTableNames(m) {
		if m.Tables[t].Kind == gizzard.TableIndex {
			s, e := shard.IndexSpan(t)
			out = append(out, span{Table: t, Start: s, End: e})
			continue
		}
		s, e := shard.ContentSpan(t)
		for _, sub := range shard.SplitSpan(s, e, contentSplits) {
			out = append(out, span{Table: t, Start: sub[0], End: sub[1]})
		}
	}
	return out
}

func sortedTableNames(m *gizzard.Map) []string {
	names := make([]string, 0, len(m.Tables))
	for n := range m.Tables {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// keyDiff is one record that differs between source and destination.
type keyDiff struct {
	Key    string `json:"key"`
	Source string `json:"source"` // its version there, or "missing"
	Dest   string `json:"dest"`
}

// spanReport is a span whose digests differed.
type spanReport struct {
	Span     string    `json:"span"`
	Diffs    []keyDiff `json:"diffs,omitempty"`
	More     int       `json:"more,omitempty"` // differing keys not listed
	InFlight int       `json:"in_flight"`      // differences newer than the start
}

// verifyReport is the outcome of a verification.
type verifyReport struct {
	Spans      int          `json:"spans"`
	Records    uint64       `json:"records"`
	Bytes      uint64       `json:"bytes"`
	Mismatched []spanReport `json:"mismatched,omitempty"`
	InFlight   int          `json:"in_flight"`
	Attempts   int          `json:"attempts"`
}

func (r verifyReport) ok() bool { return len(r.Mismatched) == 0 }

func (r verifyReport) summary() string {
	if r.ok() {
		s := fmt.Sprintf("verified: %d spans, %d records (%s) equal on both sides", r.Spans, r.Records, humanBytes(r.Bytes))
		if r.InFlight > 0 {
			s += fmt.Sprintf("; %d newer records in flight ignored", r.InFlight)
		}
		return s
	}
	var b strings.Builder
	n := 0
	for _, sp := range r.Mismatched {
		n += len(sp.Diffs) + sp.More
	}
	fmt.Fprintf(&b, "verification failed after %d rounds: %d of %d spans differ, %d records:", r.Attempts, len(r.Mismatched), r.Spans, n)
	for _, sp := range r.Mismatched {
		fmt.Fprintf(&b, "\n  %s:", sp.Span)
		for _, d := range sp.Diffs {
			fmt.Fprintf(&b, "\n    %s: source %s, destination %s", d.Key, d.Source, d.Dest)
		}
		if sp.More > 0 {
			fmt.Fprintf(&b, "\n    ... and %d more", sp.More)
		}
	}
	return b.String()
}

// side is one copy being compared.
type side struct {
	addr, shard string
	admin       pb.ShardAdminClient
}

func (d *driver) side(m *gizzard.Map, node, id string) (side, error) {
	addr, err := nodeAddr(m, node)
	if err != nil {
		return side{}, err
	}
	a, err := d.s.admin(addr)
	if err != nil {
		return side{}, err
	}
	return side{addr: addr, shard: id, admin: a}, nil
}

func (sd side) digest(ctx context.Context, sp span, rs []*pb.HashRange) (*pb.DigestShardResponse, error) {
	return sd.admin.DigestData(ctx, &pb.DigestDataRequest{Shard: sd.shard, Start: sp.Start, End: sp.End, Ranges: rs})
}

// records reads a span: key → version.
func (sd side) records(ctx context.Context, sp span, rs []*pb.HashRange) (map[string]*pb.Version, error) {
	stream, err := sd.admin.ExportShard(ctx, &pb.ExportShardRequest{Shard: sd.shard, Start: sp.Start, End: sp.End, Ranges: rs})
	if err != nil {
		return nil, err
	}
	out := map[string]*pb.Version{}
	for {
		page, err := stream.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		for _, mu := range page.Mutations {
			out[recordKey(mu)] = mu.Version
		}
		if page.Done {
			return out, nil
		}
	}
}

// recordKey names the record a mutation writes.
func recordKey(mu *pb.Mutation) string {
	switch op := mu.Op.(type) {
	case *pb.Mutation_Put_:
		return fmt.Sprintf("content %s %q", mu.Table, op.Put.Key)
	case *pb.Mutation_Delete_:
		return fmt.Sprintf("content %s %q", mu.Table, op.Delete.Key)
	case *pb.Mutation_Append_:
		return fmt.Sprintf("index %s owner=%d id=%d", mu.Table, op.Append.Owner, op.Append.Id)
	case *pb.Mutation_Remove_:
		return fmt.Sprintf("index %s owner=%d id=%d", mu.Table, op.Remove.Owner, op.Remove.Id)
	}
	return fmt.Sprintf("%s ?", mu.Table)
}

func versionString(v *pb.Version) string {
	if v == nil {
		return "missing"
	}
	return fmt.Sprintf("%s@%d", time.UnixMilli(int64(v.Hlc>>16)).UTC().Format("15:04:05.000"), v.Site)
}

// verify compares the migration's source and destination.
func (d *driver) verify(ctx context.Context, m *gizzard.Map, g gizzard.Migration) (verifyReport, error) {
	src, err := d.side(m, g.SourceNode, g.Source)
	if err != nil {
		return verifyReport{}, err
	}
	dst, err := d.side(m, g.DestNode, g.Dest)
	if err != nil {
		return verifyReport{}, err
	}
	d.say(g.ID, "verifying %s on %s against %s on %s", g.Source, g.SourceNode, g.Dest, g.DestNode)
	return compareSides(ctx, src, dst, verifySpans(m), copyRanges(m, g), time.Now())
}

// compareSides compares two copies span by span; start is when the
// comparison began (newer differences are in flight).
func compareSides(ctx context.Context, src, dst side, spans []span, rs []*pb.HashRange, start time.Time) (verifyReport, error) {
	rep := verifyReport{Spans: len(spans)}
	startHLC := uint64(start.UnixMilli()) << 16
	todo := spans
	for attempt := 1; ; attempt++ {
		rep.Attempts = attempt
		rep.Mismatched, rep.InFlight = nil, 0
		var again []span
		for _, sp := range todo {
			a, err := src.digest(ctx, sp, rs)
			if err != nil {
				return rep, fmt.Errorf("digest of %s on %s: %w", src.shard, src.addr, err)
			}
			b, err := dst.digest(ctx, sp, rs)
			if err != nil {
				return rep, fmt.Errorf("digest of %s on %s: %w", dst.shard, dst.addr, err)
			}
			if attempt == 1 {
				rep.Records += a.Records
				rep.Bytes += a.Bytes
			}
			if bytes.Equal(a.Sum, b.Sum) {
				continue
			}
			sr, err := diffSpan(ctx, src, dst, sp, rs, startHLC)
			if err != nil {
				return rep, err
			}
			rep.InFlight += sr.InFlight
			if len(sr.Diffs) > 0 {
				rep.Mismatched = append(rep.Mismatched, sr)
				again = append(again, sp)
			}
		}
		if len(again) == 0 || attempt == verifyAttempts {
			return rep, nil
		}
		todo = again
		if err := timex.Sleep(ctx, time.Second); err != nil {
			return rep, err
		}
	}
}

// diffSpan lists the records of a span that differ, setting aside those
// with a version newer than startHLC.
func diffSpan(ctx context.Context, src, dst side, sp span, rs []*pb.HashRange, startHLC uint64) (spanReport, error) {
	sr := spanReport{Span: sp.String()}
	a, err := src.records(ctx, sp, rs)
	if err != nil {
		return sr, fmt.Errorf("read %s of %s on %s: %w", sp, src.shard, src.addr, err)
	}
	b, err := dst.records(ctx, sp, rs)
	if err != nil {
		return sr, fmt.Errorf("read %s of %s on %s: %w", sp, dst.shard, dst.addr, err)
	}
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		va, vb := a[k], b[k]
		if va != nil && vb != nil && va.Hlc == vb.Hlc && va.Site == vb.Site {
			continue
		}
		if (va != nil && va.Hlc >= startHLC) || (vb != nil && vb.Hlc >= startHLC) {
			sr.InFlight++
			continue
		}
		if len(sr.Diffs) < maxDiffKeys {
			sr.Diffs = append(sr.Diffs, keyDiff{Key: k, Source: versionString(va), Dest: versionString(vb)})
		} else {
			sr.More++
		}
	}
	return sr, nil
}
