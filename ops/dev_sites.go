package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/internal/tlsx"
)

// A deployment of several dev sites (dev up --sites S): site s (0 for
// site-a) has the ports base+100s to base+100s+99; its node i uses
// base+100s+10i to +3 as a lone site's would, and its relay serves HTTP on
// base+100s+90, so a site has at most 9 nodes.
const (
	maxDevSites     = 26 // site-a to site-z; site ids 1 to 26
	siteStride      = 100
	maxSiteNodes    = 9
	relayPortOffset = 90
)

// relayProbeTimeout bounds one GET of a relay's /healthz.
const relayProbeTimeout = 2 * time.Second

// devSubsite is one site of a multi-site dev deployment: its nodes, in
// DIR/NAME/node-i, and its relay, logging to DIR/NAME/relay/log.
type devSubsite struct {
	Name       string    `json:"name"`
	ID         uint32    `json:"id"`
	NATSURL    string    `json:"nats_url"`
	MapVersion uint64    `json:"map_version,omitempty"`
	Nodes      []devNode `json:"nodes"`
	Relay      devRelay  `json:"relay"`
}

// devRelay is the relay process of a dev site. Args is its whole command
// line after the binary (devSite.RelayBinary), so that it can be started
// again the same way: it resumes from its durable consumers.
type devRelay struct {
	PID      int      `json:"pid"`
	HTTPAddr string   `json:"http_addr"`
	Args     []string `json:"args"`
	Log      string   `json:"log"`
}

// devSiteName names site s (from 0) of a multi-site deployment.
func devSiteName(s int) string { return fmt.Sprintf("site-%c", 'a'+s) }

// procs returns every process of the record, nodes of a lone site as
// they are, and those of a multi-site deployment named SITE/node-i and
// SITE/relay.
func (d *devSite) procs() []devNode {
	out := append([]devNode(nil), d.Nodes...)
	out = append(out, d.relayProcs()...)
	return append(out, d.siteNodeProcs()...)
}

// relayProcs returns the relays of a multi-site deployment, as SITE/relay.
func (d *devSite) relayProcs() []devNode {
	var out []devNode
	for _, st := range d.Sites {
		out = append(out, devNode{ID: st.Name + "/relay", PID: st.Relay.PID, HTTPAddr: st.Relay.HTTPAddr, Log: st.Relay.Log})
	}
	return out
}

// siteNodeProcs returns the nodes of a multi-site deployment, as
// SITE/node-i.
func (d *devSite) siteNodeProcs() []devNode {
	var out []devNode
	for _, st := range d.Sites {
		for _, n := range st.Nodes {
			n.ID = st.Name + "/" + n.ID
			out = append(out, n)
		}
	}
	return out
}

func (f devUpFlags) validateSites() error {
	last := f.basePort + siteStride*(f.sites-1) + relayPortOffset
	switch {
	case f.sites < 1 || f.sites > maxDevSites:
		return fmt.Errorf("--sites %d: must be in [1, %d]", f.sites, maxDevSites)
	case f.nodes < 1 || f.nodes > maxSiteNodes:
		return fmt.Errorf("--nodes %d: with --sites above 1, must be in [1, %d] (a site has 100 ports)", f.nodes, maxSiteNodes)
	case f.replicas < 1 || f.replicas > f.nodes:
		return fmt.Errorf("--replicas %d: must be in [1, --nodes %d]", f.replicas, f.nodes)
	case f.shards < 1 || f.shards > 1024:
		return fmt.Errorf("--shards %d: must be in [1, 1024]", f.shards)
	case f.basePort < 1 || last > 65535:
		return fmt.Errorf("--base-port %d: the ports of %d sites (up to base+%d) must fit in [1, 65535]", f.basePort, f.sites, last-f.basePort)
	case f.readyWait <= 0:
		return fmt.Errorf("--ready-timeout %s: must be positive", f.readyWait)
	}
	return nil
}

// devSitesLayout lays out the sites of f in dir: names, ids, ports, data
// directories, logs and relay command lines (with their certificates in
// DIR/certs, unless f.plaintext).
func devSitesLayout(dir string, f devUpFlags) []devSubsite {
	certs := newDevTLS(dir, f.plaintext)
	hostPort := func(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }
	var sites []devSubsite
	for s := range f.sites {
		name := devSiteName(s)
		base := f.basePort + siteStride*s
		st := devSubsite{Name: name, ID: uint32(s + 1)}
		var addrs []string
		for i := range f.nodes {
			p := base + portStride*i
			n := devNode{
				ID:       fmt.Sprintf("node-%d", i),
				GRPCAddr: hostPort(p),
				HTTPAddr: hostPort(p + 1),
				RaftAddr: hostPort(p + 2),
				DataDir:  filepath.Join(dir, name, fmt.Sprintf("node-%d", i)),
			}
			n.Log = filepath.Join(n.DataDir, "log")
			st.Nodes = append(st.Nodes, n)
			addrs = append(addrs, n.GRPCAddr)
		}
		st.Relay = devRelay{HTTPAddr: hostPort(base + relayPortOffset), Log: filepath.Join(dir, name, "relay", "log")}
		st.Relay.Args = []string{"--addr", strings.Join(addrs, ","), "--http-addr", st.Relay.HTTPAddr, "--log-format", "text"}
		st.Relay.Args = append(st.Relay.Args, certs.args(devRelayCert(name))...)
		sites = append(sites, st)
	}
	return sites
}

// devUpSites starts a deployment of f.sites sites, links them and starts
// their relays; on failure it stops what it started.
func (s *session) devUpSites(ctx context.Context, f devUpFlags) (err error) {
	if err := f.validate(); err != nil {
		return err
	}
	dir, err := filepath.Abs(f.dir)
	if err != nil {
		return fmt.Errorf("ops: --dir: %w", err)
	}
	if old, err := readSite(dir); err == nil {
		if live := old.live(); len(live) > 0 {
			pids := make([]string, len(live))
			for i, n := range live {
				pids[i] = strconv.Itoa(n.PID)
			}
			return fmt.Errorf("%w in %s (pids %s); stop it with: ops dev down --dir %s", ErrSiteRunning, dir, strings.Join(pids, " "), dir)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	site := &devSite{Dir: dir, StartedAt: time.Now().UTC(), Nodes: []devNode{}, Sites: devSitesLayout(dir, f)}
	if err := devSitesPortsFree(site.Sites); err != nil {
		return err
	}
	var names []string
	var ids []tlsx.Identity
	for _, st := range site.Sites {
		names = append(names, st.Name)
		for _, n := range st.Nodes {
			ids = append(ids, tlsx.Identity{Name: devNodeCert(st.Name, n.ID), Role: tlsx.RoleNode, Site: st.Name})
		}
		ids = append(ids, tlsx.Identity{Name: devRelayCert(st.Name), Role: tlsx.RoleRelay, Site: st.Name})
	}
	certs, err := s.prepareDevTLS(dir, f.plaintext, names, ids)
	if err != nil {
		return err
	}
	site.CertsDir = certs.dir
	if _, err := os.Stat(site.Sites[0].Nodes[0].DataDir); err == nil {
		fmt.Fprintf(s.errOut, "note: %s holds the data of an earlier deployment: the nodes resume it, which works only with the same --base-port, --sites and --nodes; for a fresh one run: ops dev down --dir %s --wipe\n", dir, dir)
	}
	for _, st := range site.Sites {
		for _, n := range st.Nodes {
			if err := os.MkdirAll(n.DataDir, 0o755); err != nil {
				return fmt.Errorf("ops: %w", err)
			}
		}
		if err := os.MkdirAll(filepath.Dir(st.Relay.Log), 0o755); err != nil {
			return fmt.Errorf("ops: %w", err)
		}
	}
	if site.Binary, err = s.nodeBinary(ctx, dir, f.bin, f.race); err != nil {
		return err
	}
	if site.RelayBinary, err = s.devBinary(ctx, dir, "relay", "--relay-bin", f.relayBin, f.race); err != nil {
		return err
	}

	defer func() {
		if err != nil && len(site.live()) > 0 {
			fmt.Fprintf(s.errOut, "dev up failed; stopping the relays and nodes it started (logs stay in %s)\n", dir)
			stopNodes(ctx, site.relayProcs(), stopGrace)
			stopNodes(ctx, site.siteNodeProcs(), stopGrace)
			_ = os.Remove(filepath.Join(dir, siteFile))
		}
	}()
	start := func(st *devSubsite, i int) error {
		args := append(devNodeArgs(st.Nodes, i, f.shards), "--site-name", st.Name, "--site-id", strconv.Itoa(int(st.ID)))
		args = append(args, certs.args(devNodeCert(st.Name, st.Nodes[i].ID))...)
		pid, err := startProcess(site.Binary, args, st.Nodes[i].Log)
		if err != nil {
			return err
		}
		st.Nodes[i].PID, st.Nodes[i].Args = pid, args
		return site.write()
	}
	// The sites come up side by side: every founding node first, then
	// the nodes that join them.
	deadline := time.Now().Add(f.readyWait)
	for k := range site.Sites {
		if err := start(&site.Sites[k], 0); err != nil {
			return err
		}
	}
	for _, st := range site.Sites {
		if _, err := s.waitDevSite(ctx, st.Nodes[:1], 0, deadline); err != nil {
			return fmt.Errorf("%s: %w", st.Name, err)
		}
	}
	for k := range site.Sites {
		for i := 1; i < f.nodes; i++ {
			if err := start(&site.Sites[k], i); err != nil {
				return err
			}
		}
	}
	for k := range site.Sites {
		st := &site.Sites[k]
		v, err := s.waitDevSite(ctx, st.Nodes, 0, deadline)
		if err == nil && f.replicas > 1 {
			v, err = s.addDevReplicas(ctx, st.Nodes, f.replicas, deadline)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", st.Name, err)
		}
		st.MapVersion = v
	}
	if err := s.linkDevSites(ctx, site.Sites, deadline); err != nil {
		return err
	}
	for k := range site.Sites {
		st := &site.Sites[k]
		pid, err := startProcess(site.RelayBinary, st.Relay.Args, st.Relay.Log)
		if err != nil {
			return err
		}
		st.Relay.PID = pid
		if err := site.write(); err != nil {
			return err
		}
	}
	for _, st := range site.Sites {
		if err := s.waitRelay(ctx, st, deadline); err != nil {
			return err
		}
	}
	if err := site.write(); err != nil {
		return err
	}
	return s.printDevUpSites(site, f)
}

// devSitesPortsFree checks that every port of the sites can be bound now:
// the nodes', node 0's nats-server's and the relay's.
func devSitesPortsFree(sites []devSubsite) error {
	for _, st := range sites {
		if err := portsFree(st.Nodes); err != nil {
			return fmt.Errorf("%s: %w", st.Name, err)
		}
		for _, p := range []struct{ what, addr string }{{"nats-server", natsAddr(st.Nodes[0].RaftAddr)}, {"relay", st.Relay.HTTPAddr}} {
			l, err := net.Listen("tcp", p.addr)
			if err != nil {
				return fmt.Errorf("%s: address %s of its %s is in use; choose another --base-port", st.Name, p.addr, p.what)
			}
			_ = l.Close()
		}
	}
	return nil
}

// linkDevSites reads every site's NATS URL from its own map, then lists
// every other site in every site's map (as ops sites add would), and
// waits until each site's nodes route with the new map. A site already
// listed as wanted is left as it is, so a resumed deployment links again.
func (s *session) linkDevSites(ctx context.Context, sites []devSubsite, deadline time.Time) error {
	siteMaps := make([]*gizzard.Map, len(sites))
	for k := range sites {
		st := &sites[k]
		m, err := s.getMap(ctx, st.Nodes[0].GRPCAddr)
		if err != nil {
			return fmt.Errorf("%s: %w", st.Name, err)
		}
		self, ok := m.Sites[st.Name]
		if !ok || self.NATSURL == "" {
			return fmt.Errorf("%s: its map lists no NATS URL for it (is its node 0 started with replication?)", st.Name)
		}
		st.NATSURL, siteMaps[k] = self.NATSURL, m
	}
	for k := range sites {
		st := &sites[k]
		var steps []gizzard.Step
		for _, o := range sites {
			if o.Name == st.Name {
				continue
			}
			cur, ok := siteMaps[k].Sites[o.Name]
			switch {
			case !ok:
				steps = append(steps, gizzard.Step{Op: gizzard.OpAddSite, Site: &gizzard.Site{Name: o.Name, ID: o.ID, NATSURL: o.NATSURL, State: gizzard.SiteActive}})
			case cur.ID != o.ID:
				return fmt.Errorf("%s: its map lists site %s with id %d, not %d: the data is of another deployment; run: ops dev down --dir %s --wipe", st.Name, o.Name, cur.ID, o.ID, filepath.Dir(filepath.Dir(st.Nodes[0].DataDir)))
			case cur.NATSURL != o.NATSURL:
				cur.NATSURL = o.NATSURL
				steps = append(steps, gizzard.Step{Op: gizzard.OpUpdateSite, Site: &cur})
			}
		}
		if len(steps) == 0 {
			continue
		}
		v, err := s.proposeAt(ctx, st.Nodes[0].GRPCAddr, steps)
		if err == nil {
			v, err = s.waitDevSite(ctx, st.Nodes, v, deadline)
		}
		if err != nil {
			return fmt.Errorf("%s: list the other sites: %w", st.Name, err)
		}
		st.MapVersion = v
	}
	return nil
}

// relayHealth asks a relay's /healthz: "ok", or why not.
func relayHealth(ctx context.Context, addr string) string {
	ctx, cancel := context.WithTimeout(ctx, relayProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	if err != nil {
		return err.Error()
	}
	req.Close = true // no idle connection outlives the probe
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Sprintf("no answer within %s", relayProbeTimeout)
		}
		return oneLine(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("%s: %s", resp.Status, oneLine(string(b)))
	}
	return "ok"
}

// waitRelay polls the relay of st until its /healthz is ok (it knows its
// site and the sites to relay from). A relay that exits fails it at once.
func (s *session) waitRelay(ctx context.Context, st devSubsite, deadline time.Time) error {
	for {
		if !processAlive(st.Relay.PID) {
			return fmt.Errorf("%s's relay (pid %d) exited; the end of %s: %s", st.Name, st.Relay.PID, st.Relay.Log, tail(st.Relay.Log, 3))
		}
		h := relayHealth(ctx, st.Relay.HTTPAddr)
		if h == "ok" {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("ops: %s's relay is not healthy in time (--ready-timeout): %s", st.Name, h)
		}
		if err := timex.Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

func (s *session) printDevUpSites(site *devSite, f devUpFlags) error {
	if s.o.json {
		return s.printJSON(site)
	}
	fmt.Fprintf(s.out, "dev deployment up in %s: %d sites of %s each, %s with %s each, one relay per site\n\n",
		site.Dir, len(site.Sites), countOf(f.nodes, "node"), countOf(f.shards, "shard tree"), countOf(f.replicas, "readable replica"))
	t := newTable("SITE", "ID", "PROCESS", "PID", "GRPC", "HTTP", "RAFT", "NATS", "LOG")
	for _, st := range site.Sites {
		for i, n := range st.Nodes {
			nats := "-"
			if i == 0 {
				nats = st.NATSURL
			}
			t.add(st.Name, strconv.Itoa(int(st.ID)), n.ID, strconv.Itoa(n.PID), n.GRPCAddr, n.HTTPAddr, n.RaftAddr, nats, n.Log)
		}
		t.add(st.Name, strconv.Itoa(int(st.ID)), "relay", strconv.Itoa(st.Relay.PID), "-", st.Relay.HTTPAddr, "-", "-", st.Relay.Log)
	}
	if err := s.printTable(t); err != nil {
		return err
	}
	a, b := site.Sites[0].Nodes[0].GRPCAddr, site.Sites[1].Nodes[0].GRPCAddr
	fmt.Fprintf(s.out, "\n%s", devTLSNote(site))
	_, err := fmt.Fprintf(s.out, `
Every site's map lists every site; each site's relay applies the other sites'
writes there. A write to any node of one site is readable at the others.

next:%s
  ops --addr %s sites          # the sites, their ids and NATS URLs
  ops --addr %s relay status   # %s's paths from the other sites: lag, watermarks
  ops --addr %s conflicts      # writes that lost to a newer version
  ops dev status --dir %s
  ops dev down --dir %s --wipe
`, devTLSExports(site), a, b, site.Sites[1].Name, b, site.Dir, site.Dir)
	return err
}

// devStatusSites is dev status of a multi-site deployment: every site's
// nodes and relay, then a ping of each site.
func (s *session) devStatusSites(ctx context.Context, site *devSite) error {
	type procRow struct {
		devNode
		Running bool `json:"running"`
	}
	type relayRow struct {
		devRelay
		Running bool   `json:"running"`
		Health  string `json:"health"`
	}
	type siteRow struct {
		Name    string      `json:"name"`
		ID      uint32      `json:"id"`
		NATSURL string      `json:"nats_url"`
		Nodes   []procRow   `json:"nodes"`
		Relay   relayRow    `json:"relay"`
		Ping    *pingReport `json:"ping,omitempty"`
	}
	var rows []siteRow
	var down, unhealthy, pingErrs, disagree []string
	nodes := newTable("SITE", "NODE", "PID", "RUNNING", "GRPC", "LOG")
	relays := newTable("SITE", "RELAY PID", "RUNNING", "HTTP", "HEALTH", "LOG")
	for _, st := range site.Sites {
		r := siteRow{Name: st.Name, ID: st.ID, NATSURL: st.NATSURL, Nodes: []procRow{}}
		var addr string
		for _, n := range st.Nodes {
			alive := processAlive(n.PID)
			r.Nodes = append(r.Nodes, procRow{n, alive})
			nodes.add(st.Name, n.ID, strconv.Itoa(n.PID), strconv.FormatBool(alive), n.GRPCAddr, n.Log)
			if !alive {
				down = append(down, st.Name+"/"+n.ID)
			} else if addr == "" {
				addr = n.GRPCAddr
			}
		}
		r.Relay = relayRow{devRelay: st.Relay, Running: processAlive(st.Relay.PID), Health: "-"}
		if r.Relay.Running {
			r.Relay.Health = relayHealth(ctx, st.Relay.HTTPAddr)
			if r.Relay.Health != "ok" {
				unhealthy = append(unhealthy, fmt.Sprintf("%s/relay (%s)", st.Name, r.Relay.Health))
			}
		} else {
			down = append(down, st.Name+"/relay")
		}
		relays.add(st.Name, strconv.Itoa(st.Relay.PID), strconv.FormatBool(r.Relay.Running), st.Relay.HTTPAddr, r.Relay.Health, st.Relay.Log)
		if addr != "" {
			p, err := s.ping(ctx, addr, 0)
			switch {
			case err != nil:
				pingErrs = append(pingErrs, fmt.Sprintf("%s: %v", st.Name, err))
			default:
				r.Ping = &p
				if !p.Agree {
					disagree = append(disagree, fmt.Sprintf("%s: %s", st.Name, p.summary()))
				}
			}
		}
		rows = append(rows, r)
	}
	if s.o.json {
		if err := s.printJSON(struct {
			Dir   string    `json:"dir"`
			Sites []siteRow `json:"sites"`
		}{site.Dir, rows}); err != nil {
			return err
		}
	} else {
		if err := s.printTable(nodes); err != nil {
			return err
		}
		fmt.Fprintln(s.out)
		if err := s.printTable(relays); err != nil {
			return err
		}
		for _, r := range rows {
			if r.Ping == nil {
				continue
			}
			fmt.Fprintf(s.out, "\n%s (site id %d, nats %s):\n", r.Name, r.ID, dash(r.NATSURL))
			_ = s.printPing(*r.Ping) // a disagreement is in disagree
		}
	}
	switch {
	case len(down) > 0:
		return fmt.Errorf("ops: dev deployment in %s: not running: %s", site.Dir, strings.Join(down, ", "))
	case len(unhealthy) > 0:
		return fmt.Errorf("ops: dev deployment in %s: relays not healthy: %s", site.Dir, strings.Join(unhealthy, ", "))
	case len(pingErrs) > 0:
		return fmt.Errorf("ops: ping: %s", strings.Join(pingErrs, "; "))
	case len(disagree) > 0:
		return fmt.Errorf("%w: %s", ErrNotAgreed, strings.Join(disagree, "; "))
	}
	return nil
}

// countOf is "1 node" or "n nodes".
func countOf(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
