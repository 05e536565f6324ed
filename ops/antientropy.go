package ops

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/protobuf/proto"
)

// Anti-entropy tunables.
const (
	// aeSplit is how many sub-spans a table span whose copies differ is cut
	// into, at each level of the descent (see leafRecords).
	aeSplit = contentSplits
	// aeApplyBatch bounds the mutations of one Replica.Apply of a repair.
	aeApplyBatch = 256
	// aeListSends bounds the keys a repair lists (the rest are counted).
	aeListSends = 100
)

// errDiverged is returned by ops verify and ops repair when copies of some
// records still differ.
var errDiverged = errors.New("ops: copies differ")

// siteEndpoint names a site and the gRPC address of any node of it.
type siteEndpoint struct{ Name, Addr string }

// aeOptions configure antiEntropy. Zero fields take the defaults of
// ensureDefaults.
type aeOptions struct {
	// Shard restricts the pass to the hash ranges of the shard tree that
	// holds this shard (a root, a logical shard or a leaf) in the first
	// site's map. Empty: every hash range.
	Shard string
	// Tables restricts the pass to these tables, which every site's map
	// must hold. Empty: every table that all the sites' maps hold, of the
	// same kind.
	Tables []string
	// Repair sends the newest version of every differing record to the
	// copies that lack it or hold an older one, then verifies again.
	Repair bool
	// DryRun, with Repair, works out the repair and sends nothing.
	DryRun bool
	// DigestsOnly stops at each site's digest: one round, the ranges whose
	// copies' digests differ are counted (aeCheck.Unequal) but not
	// narrowed down, and no record is read. Not with Repair.
	DigestsOnly bool
	// Rounds is how many rounds, RoundInterval apart, a difference must
	// survive to count (a replica job or a relay may still bring the
	// write). Default verifyAttempts (5); 1 counts what the first look
	// finds.
	Rounds int
	// RoundInterval is the pause between rounds. Default 1s.
	RoundInterval time.Duration
	// MaxKeys bounds the keys listed per differing range; the others are
	// counted in the range's More. Default maxDiffKeys (20).
	MaxKeys int
	// Progress, if set, receives progress lines (for long runs).
	Progress io.Writer
}

// ensureDefaults fills the zero fields of o with their defaults.
func (o *aeOptions) ensureDefaults() {
	if o.Rounds == 0 {
		o.Rounds = verifyAttempts
	}
	if o.RoundInterval == 0 {
		o.RoundInterval = time.Second
	}
	if o.MaxKeys == 0 {
		o.MaxKeys = maxDiffKeys
	}
}

// validate checks o after ensureDefaults.
func (o *aeOptions) validate() error {
	switch {
	case o.Rounds < 1:
		return fmt.Errorf("rounds %d: must be at least 1", o.Rounds)
	case o.RoundInterval < 0:
		return fmt.Errorf("round interval %s: must not be negative", o.RoundInterval)
	case o.MaxKeys < 0:
		return fmt.Errorf("max keys %d: must not be negative", o.MaxKeys)
	case o.DryRun && !o.Repair:
		return errors.New("a dry run is of a repair")
	case o.DigestsOnly && o.Repair:
		return errors.New("a repair needs more than digests")
	}
	return nil
}

// aeReport is the outcome of antiEntropy.
type aeReport struct {
	Sites  []string `json:"sites"`
	Tables []string `json:"tables"`
	Shard  string   `json:"shard,omitempty"`
	// Notes say what was left out and why (a table not in every site's
	// map, a hash range a site routes nowhere readable).
	Notes []string `json:"notes,omitempty"`
	// Verify is the verification; Repair what a repair sent (or would
	// send, in a dry run), and After the verification after it.
	Verify aeCheck   `json:"verify"`
	Repair *aeRepair `json:"repair,omitempty"`
	After  *aeCheck  `json:"after,omitempty"`
}

// final returns the last verification: After if a repair was verified,
// else Verify.
func (r *aeReport) final() aeCheck {
	if r.After != nil {
		return *r.After
	}
	return r.Verify
}

// ok reports whether the last verification found every copy equal and no
// key was left unresolved.
func (r *aeReport) ok() bool {
	return r.final().ok() && (r.Repair == nil || len(r.Repair.Unresolved) == 0)
}

// digests returns the last verification's digest of each site, by name.
func (r *aeReport) digests() map[string]aeSiteDigest {
	out := map[string]aeSiteDigest{}
	for _, d := range r.final().Digests {
		out[d.Site] = d
	}
	return out
}

// summary says in one line what the pass found and did: "equal: ...", or
// how many keys differ and what a repair sent, and each site's digest
// (its first 16 hex digits) and record count.
func (r *aeReport) summary() string {
	var b strings.Builder
	v := r.Verify
	switch {
	case v.DigestsOnly && v.ok():
		fmt.Fprintf(&b, "digests: %s equal on every copy", countOf(v.Ranges, "range"))
	case v.DigestsOnly:
		fmt.Fprintf(&b, "digests: %d of %s differ between copies", v.Unequal, countOf(v.Ranges, "range"))
	case v.ok():
		fmt.Fprintf(&b, "equal: %s on every copy", countOf(v.Ranges, "range"))
	default:
		fmt.Fprintf(&b, "%s differ in %d of %s", countOf(v.Keys, "key"), len(v.Differing), countOf(v.Ranges, "range"))
	}
	if rp := r.Repair; rp != nil && rp.Writes > 0 {
		verb := "repaired"
		if rp.DryRun {
			verb = "would repair"
		}
		fmt.Fprintf(&b, "; %s %s (%s)", verb, countOf(rp.Keys, "key"), copiesOf(rp.Writes))
	}
	if rp := r.Repair; rp != nil && len(rp.Unresolved) > 0 {
		fmt.Fprintf(&b, "; %s unresolved", countOf(len(rp.Unresolved), "key"))
	}
	if a := r.After; a != nil {
		if a.ok() {
			b.WriteString("; after: equal")
		} else {
			fmt.Fprintf(&b, "; after: %s still differ", countOf(a.Keys, "key"))
		}
	}
	for i, d := range r.final().Digests {
		sep := ", "
		if i == 0 {
			sep = "; digests "
		}
		fmt.Fprintf(&b, "%s%s %s (%d records)", sep, d.Site, d.Digest[:16], d.Records)
	}
	return b.String()
}

// aeCheck is one verification: a digest per site, and the ranges whose
// copies differ.
type aeCheck struct {
	Start   time.Time      `json:"start"`
	Digests []aeSiteDigest `json:"digests"`
	// Ranges counts the (table, hash range) pieces compared, Copies their
	// copies (physical shards) in all.
	Ranges int `json:"ranges"`
	Copies int `json:"copies"`
	// Differing lists the ranges whose copies differ, in table and hash
	// order; Keys counts their differing records, listed or not.
	Differing []aeRange `json:"differing,omitempty"`
	Keys      int       `json:"keys"`
	// InFlight counts differences set aside as writes in flight (a version
	// newer than the start), in the last round.
	InFlight int `json:"in_flight"`
	Rounds   int `json:"rounds"`
	// Unequal counts the ranges whose copies' digests differed in the
	// first round, writes in flight included. DigestsOnly says the check
	// stopped there (aeOptions.DigestsOnly): Differing and Keys are empty.
	Unequal     int  `json:"unequal"`
	DigestsOnly bool `json:"digests_only,omitempty"`
}

// ok reports whether every copy holds the same records: no key differs
// or, for digests only, no range's digests do.
func (c aeCheck) ok() bool {
	if c.DigestsOnly {
		return c.Unequal == 0
	}
	return c.Keys == 0
}

// aeSiteDigest sums up a site's copy of what was compared.
type aeSiteDigest struct {
	Site string `json:"site"`
	// Digest is SHA-256, in hex, over each range's table, bounds and
	// DigestData sum, in range order, taking each range's first copy at
	// the site (by shard id). Two sites hold the same records exactly when
	// their digests of one run are equal; runs over other sites, tables or
	// a shard cut the ranges differently.
	Digest string `json:"digest"`
	// Records and Bytes are those of the copies the digest took.
	Records uint64 `json:"records"`
	Bytes   uint64 `json:"bytes"`
	// Shards counts the site's physical shards compared; ReplicasAgree
	// says whether every copy of each range at the site had the same
	// digest.
	Shards        int  `json:"shards"`
	ReplicasAgree bool `json:"replicas_agree"`
}

// aeRange is a hash range [Lo, Hi) of a table whose copies differ. Hi is
// 0x10000000000000000 for the end of the hash space.
type aeRange struct {
	Table    string  `json:"table"`
	Lo       string  `json:"lo"`
	Hi       string  `json:"hi"`
	Keys     []aeKey `json:"keys"`
	More     int     `json:"more,omitempty"` // differing keys not listed
	InFlight int     `json:"in_flight,omitempty"`
}

func (r aeRange) String() string { return fmt.Sprintf("%s [%s, %s)", r.Table, r.Lo, r.Hi) }

// aeKey is a record whose copies differ: what each copy holds.
type aeKey struct {
	Key    string   `json:"key"`
	Newest string   `json:"newest"`
	Copies []aeCopy `json:"copies"`
}

// aeCopy is what one copy holds of a record: its version, with
// " deleted" for a tombstone, or "missing".
type aeCopy struct {
	Site    string `json:"site"`
	Node    string `json:"node"`
	Shard   string `json:"shard"`
	Version string `json:"version"`
}

// aeRepair is what a repair sent, or would send in a dry run.
type aeRepair struct {
	DryRun bool `json:"dry_run,omitempty"`
	// Keys counts the records repaired, Writes the copies they were sent
	// to (one Replica.Apply mutation each); Applied and Superseded how the
	// copies took them (superseded: the copy had meanwhile got this
	// version or a newer one).
	Keys       int `json:"keys"`
	Writes     int `json:"writes"`
	Applied    int `json:"applied"`
	Superseded int `json:"superseded"`
	// Sends lists the first aeListSends keys; More counts the others.
	Sends []aeSend `json:"sends,omitempty"`
	More  int      `json:"more,omitempty"`
	// Unresolved lists keys whose copies hold different records under
	// one version (no newest to send); they are left alone.
	Unresolved []string `json:"unresolved,omitempty"`
}

// aeSend is the newest version of a record, sent from one copy to others.
type aeSend struct {
	Key     string   `json:"key"`
	Version string   `json:"version"`
	From    string   `json:"from"`
	To      []string `json:"to"`
}

// antiEntropy compares every copy of the data of the given sites, and
// with o.Repair brings the copies that lack a record's newest version up
// to it.
//
// With one site it compares the replicas of every shard tree of that site;
// with several, every replica of every site. Each site has its own map
// (shard ids, nodes and forwardings differ between sites), but a key's
// routing hash is the same everywhere, so per table the hash space is cut
// at the union of every site's forwarding bases: each piece then lies
// within one shard tree at every site, and its copies are the readable
// leaves of those trees (Map.PlanRead; a write-only replica still being
// filled is left out). Each copy digests the piece's records within the
// table's key span (ShardAdmin.DigestData with the piece as hash range):
// the top of a Merkle-style tree. Where the digests differ the span is cut
// into aeSplit sub-spans, digested again, down to spans of at most
// leafRecords records, and only the sub-spans that still differ are read
// (ExportShard) and compared record by record, versions and payloads,
// tombstones included. As in a migration's verification, a difference in
// which some copy holds a version newer than the pass's start is a write
// in flight and is set aside, and a difference counts only if it is still
// there after o.Rounds rounds o.RoundInterval apart.
//
// The report gives each site's combined digest and record count (equal
// digests of one run: equal data), the ranges whose copies differ with
// each differing key's version at every copy ("missing" where absent), at
// most o.MaxKeys keys per range, and what was set aside.
//
// A repair sends, for every differing key, its newest version (the
// greatest (HLC, site); a tombstone is a version too) to every copy that
// lacks it or holds an older one, with Replica.Apply on that copy's node
// stamped with its site's map version, which is idempotent and last
// writer wins: a copy that got a newer write meanwhile keeps it. Nothing
// goes through a router, so a repair is neither journaled nor published to
// other sites; each site's copies are repaired directly. The sites' maps
// are then read again and everything verified again (After). A key whose
// copies hold different records under the same version has no newest and
// is left alone (Unresolved).
//
// sites must name at least one site, each once. The error is nil when the
// pass ran, whether or not copies differ: see the report.
func (s *session) antiEntropy(ctx context.Context, sites []siteEndpoint, o aeOptions) (aeReport, error) {
	o.ensureDefaults()
	if err := o.validate(); err != nil {
		return aeReport{}, err
	}
	if err := validEndpoints(sites); err != nil {
		return aeReport{}, err
	}
	p, err := s.aePlan(ctx, sites, o)
	if err != nil {
		return aeReport{}, err
	}
	rep := aeReport{Tables: p.tables, Shard: o.Shard, Notes: p.notes}
	for _, st := range sites {
		rep.Sites = append(rep.Sites, st.Name)
	}
	var c comparison
	rep.Verify, c, err = p.check(ctx, o, "verify")
	if err != nil || !o.Repair {
		return rep, err
	}
	r, err := s.aeRepairDiffs(ctx, p, c, o)
	rep.Repair = &r
	if err != nil || o.DryRun || r.Writes == 0 {
		return rep, err
	}
	// The maps may have changed meanwhile: plan again.
	if p, err = s.aePlan(ctx, sites, o); err != nil {
		return rep, err
	}
	after, _, err := p.check(ctx, o, "after repair")
	if err != nil {
		return rep, err
	}
	rep.After = &after
	return rep, nil
}

func validEndpoints(sites []siteEndpoint) error {
	if len(sites) == 0 {
		return errors.New("no site to compare")
	}
	seen := map[string]bool{}
	for _, st := range sites {
		switch {
		case st.Name == "":
			return fmt.Errorf("the site at %s has no name", st.Addr)
		case st.Addr == "":
			return fmt.Errorf("site %s has no address", st.Name)
		case seen[st.Name]:
			return fmt.Errorf("site %s is named twice", st.Name)
		}
		seen[st.Name] = true
	}
	return nil
}

// aePlan is what one pass compares: per table and piece of the hash space,
// the copies of every site.
type aePlan struct {
	sites  []siteEndpoint
	maps   []*gizzard.Map
	tables []string
	notes  []string
	pieces []aePiece
	sets   []copySet // one per piece
}

// aePiece is the hash range [lo, hi) of a table (hi 0: up to 2^64), and
// the site (an index of aePlan.sites) of each copy of its set.
type aePiece struct {
	table  string
	lo, hi uint64
	siteOf []int
}

// aePlan reads every site's map and lays out the pieces and their copies.
func (s *session) aePlan(ctx context.Context, sites []siteEndpoint, o aeOptions) (*aePlan, error) {
	p := &aePlan{sites: sites}
	for _, st := range sites {
		if err := s.checkSiteName(ctx, st); err != nil {
			return nil, err
		}
		m, err := s.getMap(ctx, st.Addr)
		if err != nil {
			return nil, fmt.Errorf("site %s: %w", st.Name, err)
		}
		p.maps = append(p.maps, m)
	}
	var err error
	if p.tables, p.notes, err = aeTables(sites, p.maps, o.Tables); err != nil {
		return nil, err
	}
	var only map[string][]*pb.HashRange
	if o.Shard != "" {
		if only, err = shardHashRanges(p.maps[0], o.Shard); err != nil {
			return nil, fmt.Errorf("site %s: %w", sites[0].Name, err)
		}
	}
	for _, t := range p.tables {
		tspan := tableSpan(t, p.maps[0].Tables[t].Kind)
		for _, r := range cutHashSpace(p.maps, t) {
			if only != nil && !inHashRanges(only[t], r[0]) {
				continue
			}
			pc := aePiece{table: t, lo: r[0], hi: r[1]}
			set := copySet{rs: []*pb.HashRange{{Table: t, Lo: r[0], Hi: r[1]}}, spans: []span{tspan}, split: aeSplit}
			for j, m := range p.maps {
				leaves, err := readableLeaves(m, t, r[0])
				if err != nil {
					p.notes = append(p.notes, fmt.Sprintf("site %s: %s %s: %v; not compared there", sites[j].Name, t, hashRangeString(r[0], r[1]), err))
					continue
				}
				for _, l := range leaves {
					addr, err := nodeAddr(m, l.Node)
					if err != nil {
						p.notes = append(p.notes, fmt.Sprintf("site %s: %s %s: %v; %s not compared", sites[j].Name, t, hashRangeString(r[0], r[1]), err, l.Shard))
						continue
					}
					a, err := s.admin(addr)
					if err != nil {
						return nil, err
					}
					set.copies = append(set.copies, side{site: sites[j].Name, node: l.Node, addr: addr, shard: l.Shard, admin: a})
					pc.siteOf = append(pc.siteOf, j)
				}
			}
			if len(set.copies) > 0 {
				p.pieces = append(p.pieces, pc)
				p.sets = append(p.sets, set)
			}
		}
	}
	if len(p.pieces) == 0 {
		return nil, errors.New("nothing to compare: no table has a hash range that a site routes to a readable shard")
	}
	return p, nil
}

// checkSiteName checks that the node at st.Addr is of site st.Name.
func (s *session) checkSiteName(ctx context.Context, st siteEndpoint) error {
	ns, err := s.nameserver(st.Addr)
	if err != nil {
		return err
	}
	rctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	r, err := ns.Status(rctx, &pb.StatusRequest{})
	if err != nil {
		return fmt.Errorf("site %s: %w", st.Name, s.rpcErr("status of", st.Addr, err))
	}
	if r.SiteName != "" && r.SiteName != st.Name {
		return fmt.Errorf("the node at %s is of site %s, not %s", st.Addr, r.SiteName, st.Name)
	}
	return nil
}

// aeTables returns the tables to compare: want, which every map must hold
// with one kind, or (want empty) every table that all the maps hold with
// one kind, and notes on those left out.
func aeTables(sites []siteEndpoint, ms []*gizzard.Map, want []string) ([]string, []string, error) {
	var tables, notes []string
	if len(want) > 0 {
		for _, t := range want {
			if slices.Contains(tables, t) {
				continue
			}
			for j, m := range ms {
				tb, ok := m.Tables[t]
				if !ok {
					return nil, nil, fmt.Errorf("table %q is not in the map of site %s (its tables: %s)", t, sites[j].Name, strings.Join(sortedTableNames(m), ", "))
				}
				if k := ms[0].Tables[t].Kind; tb.Kind != k {
					return nil, nil, fmt.Errorf("table %q is %s at site %s and %s at site %s", t, k, sites[0].Name, tb.Kind, sites[j].Name)
				}
			}
			tables = append(tables, t)
		}
		return tables, nil, nil
	}
	all := map[string]bool{}
	for _, m := range ms {
		for t := range m.Tables {
			all[t] = true
		}
	}
	for _, t := range slices.Sorted(maps.Keys(all)) {
		var why string
		for j, m := range ms {
			tb, ok := m.Tables[t]
			if !ok {
				why = fmt.Sprintf("table %s is not in the map of site %s", t, sites[j].Name)
				break
			}
			if k, ok := ms[0].Tables[t]; ok && tb.Kind != k.Kind {
				why = fmt.Sprintf("table %s is %s at site %s and %s at site %s", t, k.Kind, sites[0].Name, tb.Kind, sites[j].Name)
				break
			}
		}
		if why != "" {
			notes = append(notes, why+"; not compared")
			continue
		}
		tables = append(tables, t)
	}
	if len(tables) == 0 {
		return nil, nil, errors.New("the sites' maps have no table in common")
	}
	return tables, notes, nil
}

// tableSpan is the shard-relative key span of a table's records.
func tableSpan(t string, k gizzard.TableKind) span {
	s, e := shard.ContentSpan(t)
	if k == gizzard.TableIndex {
		s, e = shard.IndexSpan(t)
	}
	return span{Table: t, Start: s, End: e}
}

// shardHashRanges returns, per table, the hash ranges that m forwards to
// the tree holding shard id.
func shardHashRanges(m *gizzard.Map, id string) (map[string][]*pb.HashRange, error) {
	if _, ok := m.Shards[id]; !ok {
		return nil, fmt.Errorf("shard %q is not in the map (see ops shards)", id)
	}
	root := m.TreeRoot(id)
	rs := treeRanges(m, root)
	if len(rs) == 0 {
		return nil, fmt.Errorf("no forwarding points to %q, the tree of shard %q: it holds no hash range", root, id)
	}
	out := map[string][]*pb.HashRange{}
	for _, r := range rs {
		out[r.Table] = append(out[r.Table], r)
	}
	return out, nil
}

func inHashRanges(rs []*pb.HashRange, h uint64) bool {
	for _, r := range rs {
		if h >= r.Lo && (r.Hi == 0 || h < r.Hi) {
			return true
		}
	}
	return false
}

// cutHashSpace cuts the hash space of table t at every base of every map's
// forwardings of t (and at 0), so that each piece [lo, hi) (hi 0: up to
// 2^64) is within one forwarding in every map.
func cutHashSpace(ms []*gizzard.Map, t string) [][2]uint64 {
	bases := []uint64{0}
	for _, m := range ms {
		for _, f := range m.Forwardings[t] {
			bases = append(bases, f.Base)
		}
	}
	slices.Sort(bases)
	bases = slices.Compact(bases)
	out := make([][2]uint64, len(bases))
	for i, b := range bases {
		out[i][0] = b
		if i+1 < len(bases) {
			out[i][1] = bases[i+1]
		}
	}
	return out
}

// readableLeaves returns the physical shards that serve reads of hash h
// of table t in m, by shard id.
func readableLeaves(m *gizzard.Map, t string, h uint64) ([]gizzard.Leaf, error) {
	fw, err := m.Lookup(t, h)
	if err != nil {
		return nil, err
	}
	leaves, err := m.PlanRead(fw.Root, 0)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(leaves, func(a, b gizzard.Leaf) int { return cmp.Compare(a.Shard, b.Shard) })
	return leaves, nil
}

// hashRangeString shows [lo, hi), hi 0 as 2^64.
func hashRangeString(lo, hi uint64) string {
	return fmt.Sprintf("[%s, %s)", hex64(lo), hashEnd(hi))
}

// hashEnd shows the exclusive end of a hash range, 0 as 2^64.
func hashEnd(hi uint64) string {
	if hi == 0 {
		return "0x10000000000000000"
	}
	return hex64(hi)
}

// check verifies the plan once (compareCopies) and reports it; what
// names the pass in progress lines.
func (p *aePlan) check(ctx context.Context, o aeOptions, what string) (aeCheck, comparison, error) {
	start := time.Now()
	co := compareOptions{start: start, rounds: o.Rounds, interval: o.RoundInterval, digestsOnly: o.DigestsOnly}
	if o.DigestsOnly {
		co.rounds = 1
	}
	if w := o.Progress; w != nil {
		co.say = func(format string, args ...any) {
			fmt.Fprintf(w, "%s: %s\n", what, fmt.Sprintf(format, args...))
		}
		co.say("comparing %s of %s at %s", countOf(len(p.pieces), "range"), countOf(len(p.tables), "table"), countOf(len(p.sites), "site"))
	}
	c, err := compareCopies(ctx, p.sets, co)
	if err != nil {
		return aeCheck{}, c, err
	}
	ck := aeCheck{
		Start: start.UTC(), Ranges: len(p.pieces), Rounds: c.rounds, InFlight: c.inFlight,
		Unequal: c.unequal, DigestsOnly: o.DigestsOnly, Digests: p.siteDigests(c),
	}
	for _, set := range p.sets {
		ck.Copies += len(set.copies)
	}
	var cur *aeRange
	curSet := -1
	for _, sd := range c.diffs {
		if sd.set != curSet {
			pc := p.pieces[sd.set]
			ck.Differing = append(ck.Differing, aeRange{Table: pc.table, Lo: hex64(pc.lo), Hi: hashEnd(pc.hi)})
			cur, curSet = &ck.Differing[len(ck.Differing)-1], sd.set
		}
		cur.InFlight += sd.inFlight
		for _, d := range sd.diffs {
			ck.Keys++
			if len(cur.Keys) >= o.MaxKeys {
				cur.More++
				continue
			}
			cur.Keys = append(cur.Keys, p.describe(sd.set, d))
		}
	}
	return ck, c, nil
}

// siteDigests sums up each site's copies of the first round's digests.
func (p *aePlan) siteDigests(c comparison) []aeSiteDigest {
	out := make([]aeSiteDigest, len(p.sites))
	hs := make([]hash.Hash, len(p.sites))
	shards := make([]map[string]bool, len(p.sites))
	for j, st := range p.sites {
		out[j] = aeSiteDigest{Site: st.Name, ReplicasAgree: true}
		hs[j] = sha256.New()
		shards[j] = map[string]bool{}
	}
	for i, pc := range p.pieces {
		ds := c.digests[i][0]
		for j := range p.sites {
			ref := -1
			for k, sj := range pc.siteOf {
				if sj != j {
					continue
				}
				shards[j][p.sets[i].copies[k].String()] = true
				if ref < 0 {
					ref = k
				} else if !bytes.Equal(ds[k].Sum, ds[ref].Sum) {
					out[j].ReplicasAgree = false
				}
			}
			fmt.Fprintf(hs[j], "%s %016x %016x ", pc.table, pc.lo, pc.hi)
			if ref < 0 {
				hs[j].Write([]byte("none\n"))
				continue
			}
			hs[j].Write(ds[ref].Sum)
			out[j].Records += ds[ref].Records
			out[j].Bytes += ds[ref].Bytes
		}
	}
	for j := range out {
		out[j].Digest = hex.EncodeToString(hs[j].Sum(nil))
		out[j].Shards = len(shards[j])
	}
	return out
}

// describe reports what every copy of set i holds of a differing record.
func (p *aePlan) describe(i int, d recordDiff) aeKey {
	k := aeKey{Key: d.key}
	if n := newestCopy(d.at); n >= 0 {
		k.Newest = recordState(d.at[n])
	}
	for c, mu := range d.at {
		cp := p.sets[i].copies[c]
		k.Copies = append(k.Copies, aeCopy{Site: cp.site, Node: cp.node, Shard: cp.shard, Version: recordState(mu)})
	}
	return k
}

// newestCopy returns the index of the copy with the newest version of a
// record (the first of equals), or -1 when every copy lacks it.
func newestCopy(at []*pb.Mutation) int {
	n := -1
	for i, mu := range at {
		if mu != nil && (n < 0 || versionOf(mu).Compare(versionOf(at[n])) > 0) {
			n = i
		}
	}
	return n
}

// recordState shows what a copy holds of a record: its version, with
// " deleted" for a tombstone, or "missing".
func recordState(mu *pb.Mutation) string {
	if mu == nil {
		return "missing"
	}
	s := versionString(mu.Version)
	if mu.GetDelete() != nil || mu.GetRemove() != nil {
		s += " deleted"
	}
	return s
}

// aeRepairDiffs sends the newest version of each differing record of c to
// the copies that lack it or hold an older one (nothing in a dry run).
func (s *session) aeRepairDiffs(ctx context.Context, p *aePlan, c comparison, o aeOptions) (aeRepair, error) {
	rep := aeRepair{DryRun: o.DryRun}
	type target struct {
		addr, shard string
		mapVersion  uint64
	}
	batches := map[target][]*pb.Mutation{}
	var order []target
	for _, sd := range c.diffs {
		set, pc := p.sets[sd.set], p.pieces[sd.set]
		for _, d := range sd.diffs {
			n := newestCopy(d.at)
			if n < 0 {
				continue
			}
			newest := d.at[n]
			var to []int
			conflict := false
			for k, mu := range d.at {
				if mu != nil && versionOf(mu).Compare(versionOf(newest)) >= 0 {
					conflict = conflict || !sameRecord(mu, newest)
					continue
				}
				to = append(to, k)
			}
			if conflict {
				rep.Unresolved = append(rep.Unresolved, d.key)
				continue
			}
			if len(to) == 0 {
				continue
			}
			rep.Keys++
			send := aeSend{Key: d.key, Version: recordState(newest), From: set.copies[n].String()}
			for _, k := range to {
				cp := set.copies[k]
				mu := proto.CloneOf(newest)
				mu.Shard = cp.shard
				t := target{addr: cp.addr, shard: cp.shard, mapVersion: p.maps[pc.siteOf[k]].Version}
				if _, ok := batches[t]; !ok {
					order = append(order, t)
				}
				batches[t] = append(batches[t], mu)
				send.To = append(send.To, cp.String())
				rep.Writes++
			}
			if len(rep.Sends) < aeListSends {
				rep.Sends = append(rep.Sends, send)
			} else {
				rep.More++
			}
		}
	}
	if o.DryRun {
		return rep, nil
	}
	if o.Progress != nil && rep.Writes > 0 {
		fmt.Fprintf(o.Progress, "repair: sending %s to %s\n", countOf(rep.Keys, "key"), copiesOf(rep.Writes))
	}
	for _, t := range order {
		muts := batches[t]
		for len(muts) > 0 {
			n := min(len(muts), aeApplyBatch)
			outs, err := s.applyAt(ctx, t.addr, t.mapVersion, muts[:n])
			if err != nil {
				return rep, fmt.Errorf("repair of %s: %w", t.shard, err)
			}
			for _, out := range outs {
				if out == pb.Outcome_OUTCOME_APPLIED {
					rep.Applied++
				} else {
					rep.Superseded++
				}
			}
			muts = muts[n:]
		}
	}
	return rep, nil
}

// applyAt applies versioned mutations, each naming its shard, to the node
// at addr with Replica.Apply, stamped with map version v.
func (s *session) applyAt(ctx context.Context, addr string, v uint64, muts []*pb.Mutation) ([]pb.Outcome, error) {
	cc, err := s.conn(addr)
	if err != nil {
		return nil, err
	}
	rctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	resp, err := pb.NewReplicaClient(cc).Apply(rctx, &pb.ApplyRequest{Mutations: muts, MapVersion: v})
	if err != nil {
		return nil, s.rpcErr("apply to", addr, err)
	}
	return resp.Outcomes, nil
}
