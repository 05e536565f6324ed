package ops

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/spf13/cobra"
)

// stallAfter is how long a replication path may stay silent before
// relay status calls it stalled (heartbeats come every second).
const stallAfter = 5 * time.Second

func newSitesCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sites",
		Short: "List the sites of the deployment, or add, update and remove one",
		Long: `Every site's shard map lists every site of the deployment (itself
included): its name, its id (the 5 site bits of ids and versions, unique), the
NATS URL of its replication stream, and its state. Each site's relay applies
the streams of the other sites its map lists, so add a new site to every
site's map (ops --addr <a node of each site> sites add ...).`,
		Example: `  ops sites
  ops sites add east --id 2 --nats-url nats://10.1.0.5:7393
  ops sites update east --nats-url nats://10.1.0.6:7393
  ops sites remove east`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			self := s.localSite(ctx)
			t := newTable("SITE", "ID", "NATS", "STATE", "USE", "")
			var rows []gizzard.Site
			for _, name := range slices.Sorted(maps.Keys(m.Sites)) {
				st := m.Sites[name]
				rows = append(rows, st)
				mark := ""
				if name == self {
					mark = "(this site)"
				}
				t.add(st.Name, strconv.Itoa(int(st.ID)), dash(st.NATSURL), string(st.State), dash(st.Use), mark)
			}
			return s.emit(rows, t)
		}),
	}
	var id uint32
	var url string
	add := &cobra.Command{
		Use:     "add NAME --id N --nats-url URL",
		Short:   "Add a site to this site's map",
		Long:    `Add site NAME with id N (0-31, unique) whose replication stream is served at URL. This site's relay starts applying its stream.`,
		Example: `  ops sites add east --id 2 --nats-url nats://10.1.0.5:7393`,
		Args:    cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpAddSite, Site: &gizzard.Site{Name: args[0], ID: id, NATSURL: url, State: gizzard.SiteActive}}})
		}),
	}
	add.Flags().Uint32Var(&id, "id", 0, "the site's id (0-31), as its nodes' --site-id")
	add.Flags().StringVar(&url, "nats-url", "", "the NATS URL of the site's replication stream")
	_ = add.MarkFlagRequired("id")
	_ = add.MarkFlagRequired("nats-url")
	update := &cobra.Command{
		Use:     "update NAME --nats-url URL",
		Short:   "Change a site's NATS URL",
		Long:    `Point this site's relay at another NATS URL for site NAME. A site's id never changes.`,
		Example: `  ops sites update east --nats-url nats://10.1.0.6:7393`,
		Args:    cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			cur, ok := m.Sites[args[0]]
			if !ok {
				return fmt.Errorf("site %q is not in the map (see ops sites)", args[0])
			}
			cur.NATSURL = url
			s.ifVersion = m.Version
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpUpdateSite, Site: &cur}})
		}),
	}
	update.Flags().StringVar(&url, "nats-url", "", "the NATS URL of the site's replication stream")
	_ = update.MarkFlagRequired("nats-url")
	remove := &cobra.Command{
		Use:     "remove NAME",
		Short:   "Remove a site from this site's map",
		Long:    `Stop relaying site NAME's stream here, and stop keeping this site's outbox for it.`,
		Example: `  ops sites remove east`,
		Args:    cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpRemoveSite, SiteName: args[0]}})
		}),
	}
	var use string
	state := &cobra.Command{
		Use:   "state NAME STATE [--use SITE]",
		Short: "Set a site's state: active, draining, fenced or recovering",
		Long: `Set the state of site NAME in this site's map. Only an active site takes
its clients' writes: in any other state its routers refuse them with
FailedPrecondition, naming the site to write to instead (--use, or the first
active site), and the Go client fails over there. Writes replicated from
other sites are applied in every state.

  draining    takes no new writes while those it acknowledged reach the others
  fenced      takes no writes; its clients write to --use
  recovering  takes no writes while it catches up and is verified

A site's routers follow their own site's map: to fence site A, run this
against a node of A (and against the other sites, so that every map agrees).
ops drill failover and failback do all of it for you.`,
		Example: `  ops --addr 127.0.0.1:7400 sites state site-a fenced --use site-b
  ops --addr 127.0.0.1:7400 sites state site-a active`,
		Args: cobra.ExactArgs(2),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			v, err := s.setSiteState(ctx, s.o.addr, args[0], gizzard.SiteState(args[1]), use)
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "site %s is %s (map version %d at %s)\n", args[0], args[1], v, s.o.addr)
			return nil
		}),
	}
	state.Flags().StringVar(&use, "use", "", "the site that clients of NAME write to meanwhile (not with active)")
	cmd.AddCommand(add, update, remove, state)
	return cmd
}

// setSiteState sets the state of site name in the map of the site at addr,
// and returns the map version that holds it once that site's nameserver has
// committed it.
func (s *session) setSiteState(ctx context.Context, addr, name string, st gizzard.SiteState, use string) (uint64, error) {
	if !st.Valid() {
		return 0, fmt.Errorf("state %q: must be one of %v", st, gizzard.SiteStates)
	}
	m, err := s.getMap(ctx, addr)
	if err != nil {
		return 0, err
	}
	cur, ok := m.Sites[name]
	if !ok {
		return 0, fmt.Errorf("site %q is not in the map of %s (see ops sites)", name, addr)
	}
	if cur.State == st && cur.Use == use {
		return m.Version, nil
	}
	cur.State, cur.Use = st, use
	return s.proposeAt(ctx, addr, []gizzard.Step{{Op: gizzard.OpUpdateSite, Site: &cur}})
}

// localSite returns the name of the site of the node at --addr ("" if
// it cannot tell).
func (s *session) localSite(ctx context.Context) string {
	ns, err := s.nameserver(s.o.addr)
	if err != nil {
		return ""
	}
	rctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	st, err := ns.Status(rctx, &pb.StatusRequest{})
	if err != nil {
		return ""
	}
	return st.SiteName
}

// replStatus is one node's replication status.
type replStatus struct {
	Node   string                        `json:"node"`
	Error  string                        `json:"error,omitempty"`
	Status *pb.ReplicationStatusResponse `json:"status,omitempty"`
}

// replicationStatus asks every node of the site of the node at addr.
func (s *session) replicationStatus(ctx context.Context, addr string, conflicts int) ([]replStatus, error) {
	m, err := s.getMap(ctx, addr)
	if err != nil {
		return nil, err
	}
	var out []replStatus
	for _, id := range sortedNodeIDs(m) {
		r := replStatus{Node: id}
		cc, err := s.conn(m.Nodes[id].GRPCAddr)
		if err == nil {
			rctx, cancel := s.rpcCtx(ctx)
			r.Status, err = pb.NewReplicaClient(cc).ReplicationStatus(rctx, &pb.ReplicationStatusRequest{Conflicts: int32(conflicts)})
			cancel()
		}
		if err != nil {
			r.Error = describeStatus(err, s.o.timeout)
		}
		out = append(out, r)
	}
	return out, nil
}

// pathLag is how far behind a path is, in seconds of origin time, and
// whether it is stalled: silent for stallAfter. A path that is caught up
// is as fresh as its last heartbeat; one that is not, as its last applied
// entry. Never 0 for a silent path.
func pathLag(o *pb.OriginStatus, now time.Time) (lag time.Duration, stalled bool) {
	at := o.AppliedAtUnixMs
	if o.Watermark >= o.PublishedSeq {
		at = max(at, o.HeartbeatAtUnixMs)
	}
	if at > 0 {
		lag = max(now.Sub(time.UnixMilli(at)), 0)
	}
	stalled = o.HeardUnixMs == 0 || now.Sub(time.UnixMilli(o.HeardUnixMs)) > stallAfter
	return lag, stalled
}

func newRelayCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Cross-site replication: the status of every path",
		Long: `Cross-site replication as this site's nodes see it. Each other site's node
publishes its writes and a heartbeat every second to its site's stream; this
site's relay applies them through a node of this site.`,
		Example: `  ops relay status`,
		RunE:    groupRunE,
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Lag, watermarks and outbox of every replication path",
		Long: `For every path (origin site and node → this site): the highest origin
sequence applied (watermark), the origin's newest published sequence (from
its heartbeat), the messages the relay still has pending, the lag in seconds
of origin time (as of the last heartbeat when caught up, so a silent path
never shows 0), whether it is stalled (nothing heard for 5s), conflicts, and
the last gap. Then each node's outbox: the entries it keeps until the other
sites apply them, and their watermarks.`,
		Example: `  ops relay status
  ops relay status --json`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			sts, err := s.replicationStatus(ctx, s.o.addr, 0)
			if err != nil {
				return err
			}
			if o.json {
				return s.printJSON(sts)
			}
			now := time.Now()
			paths := newTable("PATH", "VIA", "WATERMARK", "PUBLISHED", "PENDING", "LAG", "STATE", "CONFLICTS", "GAP")
			outbox := newTable("NODE", "NATS", "OUTBOX", "OLDEST", "PUBLISHED", "SITE WATERMARKS")
			for _, r := range sts {
				if r.Status == nil {
					outbox.add(r.Node, "? "+r.Error, "", "", "", "")
					continue
				}
				for _, p := range r.Status.Origins {
					lag, stalled := pathLag(p, now)
					state := "ok"
					if stalled {
						state = "STALLED"
					}
					paths.add(fmt.Sprintf("%s/%s", p.OriginSiteName, p.OriginNode), r.Node, strconv.FormatUint(p.Watermark, 10),
						strconv.FormatUint(p.PublishedSeq, 10), strconv.FormatUint(p.Pending, 10), lag.Round(time.Millisecond).String(),
						state, strconv.FormatUint(p.Conflicts, 10), dash(p.Gap))
				}
				nats := "connected"
				if !r.Status.NatsConnected {
					nats = "DISCONNECTED"
				}
				var wms []string
				for _, site := range slices.Sorted(maps.Keys(r.Status.SiteWatermarks)) {
					wms = append(wms, fmt.Sprintf("%s=%d", site, r.Status.SiteWatermarks[site]))
				}
				outbox.add(r.Node, nats+" "+r.Status.NatsUrl, strconv.FormatUint(r.Status.OutboxEntries, 10),
					strconv.FormatUint(r.Status.OutboxOldestSeq, 10), strconv.FormatUint(r.Status.PublishedSeq, 10), dash(strings.Join(wms, ", ")))
			}
			if len(paths.rows) == 1 {
				fmt.Fprintln(s.out, "no replication path has applied anything here yet (is the relay running? ops sites lists the sites)")
			} else if err := s.printTable(paths); err != nil {
				return err
			}
			fmt.Fprintln(s.out)
			return s.printTable(outbox)
		}),
	}
	cmd.AddCommand(status)
	return cmd
}

func newConflictsCommand(o *options) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "conflicts",
		Short: "Writes from other sites that lost to a newer version",
		Long: `The bounded log (the newest 1000 per node, kept in memory) of writes that
relays brought from other sites and that lost under last-writer-wins to a
version this site already held: table, key (or index owner and id), the
losing version and its site. The winner is what reads return.`,
		Example: `  ops conflicts
  ops conflicts --limit 20 --json`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			sts, err := s.replicationStatus(ctx, s.o.addr, limit)
			if err != nil {
				return err
			}
			type row struct {
				Node string `json:"node"`
				*pb.Conflict
			}
			var rows []row
			for _, r := range sts {
				if r.Status == nil {
					fmt.Fprintf(s.errOut, "note: %s: %s\n", r.Node, r.Error)
					continue
				}
				for _, c := range r.Status.Conflicts {
					rows = append(rows, row{r.Node, c})
				}
			}
			slices.SortFunc(rows, func(a, b row) int { return int(b.AtUnixMs - a.AtUnixMs) })
			t := newTable("AT", "VIA", "TABLE", "KEY", "LOSER", "FROM SITE")
			for _, r := range rows {
				key := fmt.Sprintf("%q", r.Key)
				if r.Owner != 0 {
					key = fmt.Sprintf("owner=%d id=%d", r.Owner, r.Id)
				}
				loser := "-"
				if r.Loser != nil {
					loser = fmt.Sprintf("%s@%d", time.UnixMilli(int64(r.Loser.Hlc>>16)).UTC().Format("15:04:05.000"), r.Loser.Site)
				}
				t.add(time.UnixMilli(r.AtUnixMs).Format("15:04:05"), r.Node, r.Table, key, loser, strconv.Itoa(int(r.OriginSite)))
			}
			if !o.json && len(rows) == 0 {
				fmt.Fprintln(s.out, "no conflicts recorded")
				return nil
			}
			return s.emit(rows, t)
		}),
	}
	cmd.Flags().IntVar(&limit, "limit", 100, "most conflicts per node")
	return cmd
}
