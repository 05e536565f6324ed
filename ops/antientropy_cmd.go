package ops

import (
	"context"
	"fmt"
	"slices"
	"strings"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/spf13/cobra"
)

// aeFlags are the flags of ops verify and ops repair.
type aeFlags struct {
	sites     []string
	siteAddrs []string
	dir       string
	shard     string
	tables    []string
	rounds    int
	dryRun    bool
	digests   bool
}

func (f *aeFlags) bind(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringSliceVar(&f.sites, "sites", nil, "compare these sites (comma separated names); none: the site at --addr, across its replicas")
	fs.StringArrayVar(&f.siteAddrs, "site-addr", nil, "NAME=HOST:PORT: the gRPC address of a node of site NAME (repeatable); none: from the dev deployment in --dir")
	fs.StringVar(&f.dir, "dir", "./aviary-dev", "the dev deployment (ops dev up --sites) whose site.json gives the sites' addresses")
	fs.StringVar(&f.shard, "shard", "", "only the hash ranges of the shard tree holding this shard, in the first site's map")
	fs.StringArrayVar(&f.tables, "table", nil, "only this table (repeatable); none: every table all the sites have")
	fs.IntVar(&f.rounds, "rounds", verifyAttempts, "rounds, a second apart, that a difference must survive to count (writes still in flight heal)")
	withEnv(fs, "dir")
}

func newVerifyCommand(o *options) *cobra.Command {
	var f aeFlags
	cmd := &cobra.Command{
		Use:   "verify [--sites A,B] [--shard S] [--table T]...",
		Short: "Compare every copy of the data, across replicas and sites, by digests",
		Long: `Compare every readable copy of the data: the replicas of each shard tree
of the site at --addr, or with --sites the replicas of every site named.

Each site has its own map, but a key hashes the same everywhere: per table the
hash space is cut at every site's forwarding bases, so that each piece lies in
one shard tree at every site, and every copy of each piece digests its records
(ShardAdmin.DigestData: keys, versions and values, tombstones included). Where
digests differ the key span is cut in 16 and digested again, down to spans of
at most 2000 records, and only those are read and compared record by record.

A difference in which some copy holds a version newer than the start is a
write in flight and is set aside; the others must survive --rounds rounds, a
second apart (a replica job or a relay may still bring the write).

The report gives each site's combined digest and record count (sites of one
run hold the same data exactly when their digests are equal), then every range
whose copies differ, with each differing key's version at every copy
("missing" where it has none), at most 20 keys per range. The exit status is 1
when copies differ: run ops repair with the same flags to fix them.

Sites' addresses come from --site-addr NAME=HOST:PORT, or, without it, from
the deployment of ops dev up --sites in --dir.`,
		Example: `  ops verify                                   # the site at --addr, its replicas
  ops verify --table statuses --shard rep-003  # one table, one shard tree
  ops verify --sites site-a,site-b             # two sites of ops dev up --sites 2
  ops verify --site-addr east=10.0.0.5:7390 --site-addr west=10.1.0.5:7390
  ops verify --sites site-a,site-b --json --rounds 1
  ops verify --sites site-a,site-b --digests-only   # quick: digests, no keys`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			return s.runAntiEntropy(ctx, f, false)
		}),
	}
	f.bind(cmd)
	cmd.Flags().BoolVar(&f.digests, "digests-only", false, "print each site's digest and count the ranges whose copies differ; read no record (one round)")
	return cmd
}

func newRepairCommand(o *options) *cobra.Command {
	var f aeFlags
	cmd := &cobra.Command{
		Use:   "repair [--sites A,B] [--shard S] [--table T]... [--dry-run]",
		Short: "Send every copy that lacks a record's newest version that version",
		Long: `Verify as ops verify does (same flags), then, for every record whose copies
differ, send its newest version (the greatest (HLC, site); a delete's tombstone
is a version too) to every copy that lacks it or holds an older one, with
Replica.Apply on that copy's node, stamped with its site's current map version.
Applying is last writer wins and idempotent: a copy that got a newer write
meanwhile keeps it, and repairing twice is harmless. A repair goes to each
copy directly, not through a router, so nothing is journaled or relayed to
other sites: name every site that should get it.

Then everything is verified again and the report shows what was sent and the
digests after. A record whose copies hold different values under one version
has no newest and is listed as unresolved. The exit status is 1 when copies
still differ afterwards.

--dry-run lists what would be sent and sends nothing.`,
		Example: `  ops repair                                   # the site at --addr, its replicas
  ops repair --dry-run
  ops repair --sites site-a,site-b --table statuses
  ops repair --site-addr east=10.0.0.5:7390 --site-addr west=10.1.0.5:7390 --rounds 1`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			return s.runAntiEntropy(ctx, f, true)
		}),
	}
	f.bind(cmd)
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "list what would be sent; send nothing")
	return cmd
}

// runAntiEntropy runs ops verify (repair false) or ops repair and prints
// the report.
func (s *session) runAntiEntropy(ctx context.Context, f aeFlags, repair bool) error {
	s.useDevDir(f.dir) // the certificates of the dev deployment whose sites it reads
	if f.rounds < 1 {
		return fmt.Errorf("--rounds %d: must be at least 1", f.rounds)
	}
	sites, err := s.aeEndpoints(ctx, f)
	if err != nil {
		return err
	}
	rep, err := s.antiEntropy(ctx, sites, aeOptions{
		Shard: f.shard, Tables: f.tables, Repair: repair, DryRun: f.dryRun,
		DigestsOnly: f.digests, Rounds: f.rounds, Progress: s.errOut,
	})
	if err != nil {
		return err
	}
	if s.o.json {
		err = s.printJSON(rep)
	} else {
		s.printAEReport(rep)
	}
	if err != nil {
		return err
	}
	return aeOutcome(rep)
}

// aeOutcome is the error that ends ops verify or ops repair: nil when the
// last verification found every copy equal.
func aeOutcome(rep aeReport) error {
	last := rep.final()
	if r := rep.Repair; r != nil && len(r.Unresolved) > 0 {
		return fmt.Errorf("%w: %s hold different records under one version at different copies and were not repaired (the first: %s)", errDiverged, countOf(len(r.Unresolved), "key"), r.Unresolved[0])
	}
	if last.ok() {
		return nil
	}
	if last.DigestsOnly {
		return fmt.Errorf("%w: the digests of %d of %s differ; run ops verify without --digests-only to list the keys", errDiverged, last.Unequal, countOf(last.Ranges, "range"))
	}
	where := fmt.Sprintf("%s in %s", countOf(last.Keys, "key"), countOf(len(last.Differing), "range"))
	switch {
	case rep.Repair == nil:
		return fmt.Errorf("%w: %s; run ops repair with the same flags to send each copy the newest version", errDiverged, where)
	case rep.Repair.DryRun:
		return fmt.Errorf("%w: %s; run ops repair without --dry-run to send them", errDiverged, where)
	}
	return fmt.Errorf("%w after the repair: %s (writes in flight, or a copy that could not be written); run ops repair again", errDiverged, where)
}

// aeEndpoints works out the sites to compare from the flags: --site-addr,
// else the dev deployment in --dir; with neither --sites nor --site-addr,
// the site of the node at --addr.
func (s *session) aeEndpoints(ctx context.Context, f aeFlags) ([]siteEndpoint, error) {
	addrs := map[string]string{}
	var named []string
	for _, sa := range f.siteAddrs {
		name, addr, ok := strings.Cut(sa, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("--site-addr %q: want NAME=HOST:PORT", sa)
		}
		if _, dup := addrs[name]; dup {
			return nil, fmt.Errorf("--site-addr names site %s twice", name)
		}
		addrs[name] = addr
		named = append(named, name)
	}
	names := f.sites
	if len(names) == 0 && len(named) == 0 {
		name := s.localSite(ctx)
		if name == "" {
			// getMap says why the node does not answer.
			if _, err := s.siteMap(ctx); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("the node at %s does not say which site it is of", s.o.addr)
		}
		return []siteEndpoint{{Name: name, Addr: s.o.addr}}, nil
	}
	if len(names) == 0 {
		names = named
	}
	var out []siteEndpoint
	if len(named) > 0 {
		for _, n := range names {
			addr, ok := addrs[n]
			if !ok {
				return nil, fmt.Errorf("--sites names %s, but no --site-addr %s=HOST:PORT gives its address", n, n)
			}
			out = append(out, siteEndpoint{Name: n, Addr: addr})
		}
		return out, nil
	}
	rec, err := readSite(f.dir)
	if err != nil {
		return nil, fmt.Errorf("no --site-addr given, and no dev deployment in %s (--dir) to take the sites' addresses from: %w", f.dir, err)
	}
	if len(rec.Sites) == 0 {
		return nil, fmt.Errorf("the dev deployment in %s is a single site (ops dev up without --sites): give --site-addr NAME=HOST:PORT, or leave out --sites", f.dir)
	}
	for _, n := range names {
		i := slices.IndexFunc(rec.Sites, func(st devSubsite) bool { return st.Name == n })
		if i < 0 {
			var have []string
			for _, st := range rec.Sites {
				have = append(have, st.Name)
			}
			return nil, fmt.Errorf("the dev deployment in %s has no site %s (its sites: %s)", f.dir, n, strings.Join(have, ", "))
		}
		var nodes []string
		for _, nd := range rec.Sites[i].Nodes {
			nodes = append(nodes, nd.GRPCAddr)
		}
		if len(nodes) == 0 {
			return nil, fmt.Errorf("the dev deployment in %s lists no node of site %s", f.dir, n)
		}
		out = append(out, siteEndpoint{Name: n, Addr: s.firstAnswering(ctx, nodes)})
	}
	return out, nil
}

// firstAnswering returns the first of addrs whose node answers Status, or
// the first of them if none does.
func (s *session) firstAnswering(ctx context.Context, addrs []string) string {
	for _, a := range addrs {
		ns, err := s.nameserver(a)
		if err != nil {
			continue
		}
		rctx, cancel := s.rpcCtx(ctx)
		_, err = ns.Status(rctx, &pb.StatusRequest{})
		cancel()
		if err == nil {
			return a
		}
	}
	return addrs[0]
}

// printAEReport prints an anti-entropy report for people.
func (s *session) printAEReport(rep aeReport) {
	w := s.out
	what := "sites " + strings.Join(rep.Sites, ", ")
	if len(rep.Sites) == 1 {
		what = "site " + rep.Sites[0]
	}
	if rep.Shard != "" {
		what += ", the tree of shard " + rep.Shard
	}
	fmt.Fprintf(w, "%s: %s (%s)\n", what, countOf(len(rep.Tables), "table"), strings.Join(rep.Tables, ", "))
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	multi := len(rep.Sites) > 1
	s.printAECheck("verify", rep.Verify, multi)
	if r := rep.Repair; r != nil {
		s.printAERepair(*r, rep.Sites)
	}
	if rep.After != nil {
		s.printAECheck("after the repair", *rep.After, multi)
	}
}

// printAECheck prints a verification; multi names the site of each copy.
func (s *session) printAECheck(what string, c aeCheck, multi bool) {
	w := s.out
	fmt.Fprintf(w, "\n%s: %s, %s, %s\n", what, countOf(c.Ranges, "range"), copiesOf(c.Copies), countOf(c.Rounds, "round"))
	t := newTable("SITE", "DIGEST", "RECORDS", "BYTES", "SHARDS", "REPLICAS")
	for _, d := range c.Digests {
		agree := "agree"
		if !d.ReplicasAgree {
			agree = "differ"
		}
		t.add(d.Site, d.Digest[:16], fmt.Sprint(d.Records), humanBytes(d.Bytes), fmt.Sprint(d.Shards), agree)
	}
	_ = s.printTable(t)
	inFlight := ""
	if c.InFlight > 0 {
		inFlight = fmt.Sprintf("; %s in flight set aside", countOf(c.InFlight, "newer record"))
	}
	if c.ok() {
		fmt.Fprintf(w, "equal: every copy of every range holds the same records%s\n", inFlight)
		return
	}
	if c.DigestsOnly {
		fmt.Fprintf(w, "the copies' digests differ in %d of %s (writes in flight included)\n", c.Unequal, countOf(c.Ranges, "range"))
		return
	}
	fmt.Fprintf(w, "%s differ in %s%s:\n", countOf(c.Keys, "key"), countOf(len(c.Differing), "range"), inFlight)
	for _, r := range c.Differing {
		fmt.Fprintf(w, "  %s:\n", r)
		for _, k := range r.Keys {
			fmt.Fprintf(w, "    %s: %s\n", k.Key, copiesString(k, multi))
		}
		if r.More > 0 {
			fmt.Fprintf(w, "    ... and %d more\n", r.More)
		}
	}
}

// copiesString groups the copies of a key by what they hold, the newest
// first: "newest 12:00:01.000@1 at site-a node-0/s0; missing at site-b
// node-0/s1" (multi: with sites).
func copiesString(k aeKey, multi bool) string {
	var states []string
	at := map[string][]string{}
	for _, c := range k.Copies {
		if _, ok := at[c.Version]; !ok {
			states = append(states, c.Version)
		}
		name := c.Node + "/" + c.Shard
		if multi {
			name = c.Site + " " + name
		}
		at[c.Version] = append(at[c.Version], name)
	}
	slices.SortStableFunc(states, func(a, b string) int {
		switch {
		case a == k.Newest && b != k.Newest:
			return -1
		case b == k.Newest && a != k.Newest:
			return 1
		}
		return 0
	})
	parts := make([]string, len(states))
	for i, st := range states {
		label := st
		if st == k.Newest {
			label = "newest " + st
		}
		parts[i] = label + " at " + strings.Join(at[st], ", ")
	}
	return strings.Join(parts, "; ")
}

// printAERepair prints what a repair sent; with one site, copies are
// named without it.
func (s *session) printAERepair(r aeRepair, sites []string) {
	w := s.out
	name := func(c string) string {
		if len(sites) == 1 {
			return strings.TrimPrefix(c, sites[0]+" ")
		}
		return c
	}
	switch {
	case r.Keys == 0 && len(r.Unresolved) == 0:
		fmt.Fprintln(w, "\nrepair: nothing to send")
	case r.DryRun:
		fmt.Fprintf(w, "\nrepair (dry run): would send %s to %s:\n", countOf(r.Keys, "key"), copiesOf(r.Writes))
	default:
		fmt.Fprintf(w, "\nrepair: sent %s to %s: %d applied, %d superseded\n", countOf(r.Keys, "key"), copiesOf(r.Writes), r.Applied, r.Superseded)
	}
	for _, sd := range r.Sends {
		to := make([]string, len(sd.To))
		for i, c := range sd.To {
			to[i] = name(c)
		}
		fmt.Fprintf(w, "  %s %s from %s to %s\n", sd.Key, sd.Version, name(sd.From), strings.Join(to, ", "))
	}
	if r.More > 0 {
		fmt.Fprintf(w, "  ... and %d more\n", r.More)
	}
	for _, k := range r.Unresolved {
		fmt.Fprintf(w, "  unresolved: %s holds different records under one version\n", k)
	}
}

// copiesOf is "1 copy" or "n copies".
func copiesOf(n int) string {
	if n == 1 {
		return "1 copy"
	}
	return fmt.Sprintf("%d copies", n)
}
