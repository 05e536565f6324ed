package ops

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/protobuf/proto"
)

// Verification compares copies of the same records by digests over key
// spans (compareCopies): a migration's source and destination (each
// table's content in contentSplits spans, its index in one), and the
// replicas of every site in anti-entropy (antientropy.go). A span whose
// digests differ is read on every copy and compared record by record.
// Writes keep flowing meanwhile, so a difference is only counted when
// every version involved is older than the verification's start (a newer
// one is in flight to the other copies) and it survives verifyAttempts
// rounds, a second apart (a replica job or a relay may still bring it).
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

// side is one copy being compared: a physical shard on a node, of a site
// when several are compared.
type side struct {
	site, node  string // for reports; empty in a migration
	addr, shard string
	admin       pb.ShardAdminClient
}

// String names the copy: "site-a node-1/default-000" (or without the
// site, or with the address when the node is unknown).
func (sd side) String() string {
	where := sd.node
	if where == "" {
		where = sd.addr
	}
	s := where + "/" + sd.shard
	if sd.site != "" {
		s = sd.site + " " + s
	}
	return s
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
	return side{node: node, addr: addr, shard: id, admin: a}, nil
}

func (sd side) digest(ctx context.Context, sp span, rs []*pb.HashRange) (*pb.DigestShardResponse, error) {
	d, err := sd.admin.DigestData(ctx, &pb.DigestDataRequest{Shard: sd.shard, Start: sp.Start, End: sp.End, Ranges: rs})
	if err != nil {
		return nil, fmt.Errorf("digest of %s on %s: %w", sd.shard, sd.addr, err)
	}
	return d, nil
}

// records reads a span: record key (recordKey) → its versioned mutation,
// tombstones included.
func (sd side) records(ctx context.Context, sp span, rs []*pb.HashRange) (map[string]*pb.Mutation, error) {
	stream, err := sd.admin.ExportShard(ctx, &pb.ExportShardRequest{Shard: sd.shard, Start: sp.Start, End: sp.End, Ranges: rs})
	if err != nil {
		return nil, fmt.Errorf("read %s of %s on %s: %w", sp, sd.shard, sd.addr, err)
	}
	out := map[string]*pb.Mutation{}
	for {
		page, err := stream.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s of %s on %s: %w", sp, sd.shard, sd.addr, err)
		}
		for _, mu := range page.Mutations {
			out[recordKey(mu)] = mu
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

// versionString shows a version as wall time (UTC, to the millisecond),
// the logical counter when it is not 0, and the origin site:
// "15:04:05.000@1", "15:04:05.000+2@1"; nil is "missing".
func versionString(v *pb.Version) string {
	if v == nil {
		return "missing"
	}
	ts := ids.Timestamp(v.Hlc)
	s := ts.WallTime().Format("15:04:05.000")
	if l := ts.Logical(); l != 0 {
		s += fmt.Sprintf("+%d", l)
	}
	return fmt.Sprintf("%s@%d", s, v.Site)
}

// versionOf is the version a record carries, for shard.Version.Compare.
func versionOf(mu *pb.Mutation) shard.Version {
	v := mu.GetVersion()
	return shard.Version{HLC: ids.Timestamp(v.GetHlc()), Site: v.GetSite()}
}

// sameRecord reports whether two copies of a record (nil: missing) are
// equal: same version and same operation and payload.
func sameRecord(a, b *pb.Mutation) bool {
	if a == nil || b == nil {
		return a == b
	}
	return versionOf(a) == versionOf(b) && a.Table == b.Table &&
		proto.Equal(a.GetPut(), b.GetPut()) && proto.Equal(a.GetDelete(), b.GetDelete()) &&
		proto.Equal(a.GetAppend(), b.GetAppend()) && proto.Equal(a.GetRemove(), b.GetRemove())
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

// compareSides compares two copies span by span (compareCopies); start is
// when the comparison began (newer differences are in flight).
func compareSides(ctx context.Context, src, dst side, spans []span, rs []*pb.HashRange, start time.Time) (verifyReport, error) {
	sets := []copySet{{copies: []side{src, dst}, rs: rs, spans: spans}}
	c, err := compareCopies(ctx, sets, compareOptions{start: start, rounds: verifyAttempts, interval: time.Second})
	rep := verifyReport{Spans: len(spans), Attempts: c.rounds, InFlight: c.inFlight}
	if err != nil {
		return rep, err
	}
	for _, ds := range c.digests[0] {
		rep.Records += ds[0].Records
		rep.Bytes += ds[0].Bytes
	}
	for _, sd := range c.diffs {
		sr := spanReport{Span: sd.span.String(), InFlight: sd.inFlight}
		for _, d := range sd.diffs {
			if len(sr.Diffs) == maxDiffKeys {
				sr.More++
				continue
			}
			sr.Diffs = append(sr.Diffs, keyDiff{Key: d.key, Source: versionString(d.at[0].GetVersion()), Dest: versionString(d.at[1].GetVersion())})
		}
		rep.Mismatched = append(rep.Mismatched, sr)
	}
	return rep, nil
}

// A Merkle-style descent: a span whose copies' digests differ and which
// holds more than leafRecords records (on some copy) is cut into
// copySet.split sub-spans, each digested again, down to maxSplitDepth
// levels; only the sub-spans that still differ are read record by record.
const (
	leafRecords   = 2000
	maxSplitDepth = 3
)

// copySet is copies that must hold the same records: those of the hash
// ranges rs (none: every record) within each of spans. With split above 1,
// a span whose digests differ is narrowed down before it is read, to spans
// of at most leaf records (0: leafRecords); else it is read whole.
type copySet struct {
	copies []side
	rs     []*pb.HashRange
	spans  []span
	split  int
	leaf   uint64
}

// recordDiff is a record whose copies differ.
type recordDiff struct {
	key string
	at  []*pb.Mutation // per copy of its set, in order; nil: missing there
}

// spanDiff is a span of a set whose copies hold different records.
type spanDiff struct {
	set      int // index of the copySet
	span     span
	diffs    []recordDiff // in key order
	inFlight int          // differences set aside as writes in flight
}

// compareOptions configure compareCopies.
type compareOptions struct {
	// start is when the comparison began: a difference in which some copy
	// holds a version at or after it is a write in flight.
	start time.Time
	// rounds is the most rounds run (at least 1), interval apart.
	rounds   int
	interval time.Duration
	// say, if set, receives progress lines.
	say func(format string, args ...any)
	// digestsOnly stops at the digests: no span is narrowed down or read.
	digestsOnly bool
}

// comparison is what compareCopies found.
type comparison struct {
	// digests holds, per set, per span and per copy, the first round's
	// digests.
	digests [][][]*pb.DigestShardResponse
	// diffs are the spans that differ in the last round; inFlight counts
	// that round's differences set aside as writes in flight.
	diffs    []spanDiff
	inFlight int
	rounds   int
	// unequal counts the spans whose copies' digests differed in the
	// first round, writes in flight included.
	unequal int
}

// compareCopies compares every set's copies span by span, by digests
// (ShardAdmin.DigestData); where they differ it reads the records
// (ExportShard) and lists those that differ. Writes keep flowing
// meanwhile, so a difference counts only when every version involved is
// older than o.start, and only if it is still there in the next round:
// spans that differ are compared again, o.interval later, up to o.rounds
// rounds in all (a replica job or a relay may still bring the write).
func compareCopies(ctx context.Context, sets []copySet, o compareOptions) (comparison, error) {
	type item struct{ set, span int }
	c := comparison{digests: make([][][]*pb.DigestShardResponse, len(sets))}
	var todo []item
	for i, set := range sets {
		c.digests[i] = make([][]*pb.DigestShardResponse, len(set.spans))
		for j := range set.spans {
			todo = append(todo, item{i, j})
		}
	}
	startHLC := uint64(o.start.UnixMilli()) << 16
	lastSaid := time.Now()
	for round := 1; ; round++ {
		c.rounds = round
		c.diffs, c.inFlight = nil, 0
		var again []item
		for n, it := range todo {
			set := &sets[it.set]
			sp := set.spans[it.span]
			ds, err := digestAll(ctx, set.copies, sp, set.rs)
			if err != nil {
				return c, err
			}
			if round == 1 {
				c.digests[it.set][it.span] = ds
			}
			if !sameSums(ds) && round == 1 {
				c.unequal++
			}
			if !sameSums(ds) && !o.digestsOnly {
				found, err := c.narrow(ctx, it.set, set, sp, ds, startHLC, 0)
				if err != nil {
					return c, err
				}
				if found {
					again = append(again, it)
				}
			}
			if o.say != nil && time.Since(lastSaid) >= 2*time.Second {
				o.say("round %d: %d of %d compared, %d differ", round, n+1, len(todo), len(again))
				lastSaid = time.Now()
			}
		}
		if len(again) == 0 || round >= o.rounds {
			return c, nil
		}
		if o.say != nil {
			o.say("round %d: %d differ; comparing them again in %s (round %d of at most %d)", round, len(again), o.interval, round+1, o.rounds)
			lastSaid = time.Now()
		}
		todo = again
		if err := timex.Sleep(ctx, o.interval); err != nil {
			return c, err
		}
	}
}

// narrow lists the records of span sp of set i whose copies differ, given
// their digests ds of sp, which differ; it reports whether it found any
// that are not in flight.
func (c *comparison) narrow(ctx context.Context, i int, set *copySet, sp span, ds []*pb.DigestShardResponse, startHLC uint64, depth int) (bool, error) {
	if set.split > 1 && depth < maxSplitDepth && maxRecords(ds) > cmp.Or(set.leaf, leafRecords) {
		if subs := shard.SplitSpan(sp.Start, sp.End, set.split); len(subs) > 1 {
			found := false
			for _, sub := range subs {
				ssp := span{Table: sp.Table, Start: sub[0], End: sub[1]}
				sds, err := digestAll(ctx, set.copies, ssp, set.rs)
				if err != nil {
					return false, err
				}
				if sameSums(sds) {
					continue
				}
				f, err := c.narrow(ctx, i, set, ssp, sds, startHLC, depth+1)
				if err != nil {
					return false, err
				}
				found = found || f
			}
			return found, nil
		}
	}
	diffs, inFlight, err := diffRecords(ctx, set.copies, sp, set.rs, startHLC)
	if err != nil {
		return false, err
	}
	c.inFlight += inFlight
	if len(diffs) == 0 {
		return false, nil
	}
	c.diffs = append(c.diffs, spanDiff{set: i, span: sp, diffs: diffs, inFlight: inFlight})
	return true, nil
}

// digestAll digests span sp on every copy, in parallel.
func digestAll(ctx context.Context, copies []side, sp span, rs []*pb.HashRange) ([]*pb.DigestShardResponse, error) {
	out := make([]*pb.DigestShardResponse, len(copies))
	errs := make([]error, len(copies))
	var wg sync.WaitGroup
	for i, cp := range copies {
		wg.Go(func() { out[i], errs[i] = cp.digest(ctx, sp, rs) })
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func sameSums(ds []*pb.DigestShardResponse) bool {
	for _, d := range ds[min(1, len(ds)):] {
		if !bytes.Equal(d.Sum, ds[0].Sum) {
			return false
		}
	}
	return true
}

func maxRecords(ds []*pb.DigestShardResponse) uint64 {
	var n uint64
	for _, d := range ds {
		n = max(n, d.Records)
	}
	return n
}

// diffRecords reads span sp on every copy, in parallel, and returns the
// records whose copies differ, in key order, setting aside (and counting)
// those in which some copy holds a version at or after startHLC.
func diffRecords(ctx context.Context, copies []side, sp span, rs []*pb.HashRange, startHLC uint64) ([]recordDiff, int, error) {
	recs := make([]map[string]*pb.Mutation, len(copies))
	errs := make([]error, len(copies))
	var wg sync.WaitGroup
	for i, cp := range copies {
		wg.Go(func() { recs[i], errs[i] = cp.records(ctx, sp, rs) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	seen := map[string]bool{}
	var keys []string
	for _, r := range recs {
		for k := range r {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	var diffs []recordDiff
	inFlight := 0
	for _, k := range keys {
		at := make([]*pb.Mutation, len(copies))
		same, newer := true, false
		for i, r := range recs {
			at[i] = r[k]
			same = same && sameRecord(at[0], at[i])
			newer = newer || (at[i] != nil && at[i].GetVersion().GetHlc() >= startHLC)
		}
		switch {
		case same:
		case newer:
			inFlight++
		default:
			diffs = append(diffs, recordDiff{key: k, at: at})
		}
	}
	return diffs, inFlight, nil
}
