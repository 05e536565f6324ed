package ops

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/spf13/cobra"
)

// modulePath is the module whose cmd/node dev up builds.
const modulePath = "github.com/aviarydb/aviary"

// defaultDevDir is where dev up puts a deployment, and drills find it.
const defaultDevDir = "./aviary-dev"

// siteFile is the name of a dev site's record in its directory.
const siteFile = "site.json"

// loneSite is the site name of the nodes of a lone dev site (dev up
// without --sites): node.Config's default, passed explicitly so that it
// matches their certificates.
const loneSite = "local"

// Dev site limits: a node's worker id is its index (at most 31), and its
// four ports are base+10i, +1, +2 and +3 (node 0's embedded nats-server).
const (
	maxDevNodes = 32
	portStride  = 10
)

// stopGrace is how long dev down waits for a node to exit after SIGTERM.
const stopGrace = 20 * time.Second

// ErrSiteRunning is returned by dev up when its directory holds a running
// site.
var ErrSiteRunning = errors.New("ops: a dev site is running")

// ErrNoSite is returned by dev down and dev status for a directory without
// a dev site.
var ErrNoSite = errors.New("ops: no dev site")

// devSite is the record of a dev site, DIR/site.json. A deployment of
// several sites (dev up --sites) lists them in Sites, each with its nodes
// and relay, and leaves Nodes empty.
type devSite struct {
	Dir         string    `json:"dir"`
	Binary      string    `json:"binary"`
	RelayBinary string    `json:"relay_binary,omitempty"`
	StartedAt   time.Time `json:"started_at"`
	MapVersion  uint64    `json:"map_version,omitempty"`
	// CertsDir holds the deployment's CA and certificates (DIR/certs);
	// empty for a plaintext deployment (dev up --plaintext).
	CertsDir string       `json:"certs_dir,omitempty"`
	Nodes    []devNode    `json:"nodes"`
	Sites    []devSubsite `json:"sites,omitempty"`
}

// devNode is one node process of a dev site.
type devNode struct {
	ID       string `json:"id"`
	PID      int    `json:"pid"`
	GRPCAddr string `json:"grpc_addr"`
	HTTPAddr string `json:"http_addr"`
	RaftAddr string `json:"raft_addr"`
	DataDir  string `json:"data_dir"`
	Log      string `json:"log"`
	// Args is the command line after the binary, so that a drill can
	// start a killed node again the same way.
	Args []string `json:"args,omitempty"`
}

// readSite reads DIR/site.json.
func readSite(dir string) (*devSite, error) {
	b, err := os.ReadFile(filepath.Join(dir, siteFile))
	if err != nil {
		return nil, err
	}
	var s devSite
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("ops: %s: %w", filepath.Join(dir, siteFile), err)
	}
	return &s, nil
}

// write records the site in DIR/site.json, atomically.
func (d *devSite) write() error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(d.Dir, siteFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("ops: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("ops: write %s: %w", path, err)
	}
	return nil
}

// live returns the processes (nodes and relays) that run.
func (d *devSite) live() []devNode {
	var out []devNode
	for _, n := range d.procs() {
		if processAlive(n.PID) {
			out = append(out, n)
		}
	}
	return out
}

func newDevCommand(o *options) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local development site of several node processes",
		Long: `Run a site of several node processes on this machine, for development and
demos: "dev up" builds cmd/node and starts the site, "dev status" checks it
and "dev down" stops it. The site lives in --dir: one data directory and log
per node, and site.json with the pids and addresses. "dev up --sites 3" starts
three such sites linked by cross-site replication, each with its relay.

Every link of a dev deployment is mutual TLS unless dev up --plaintext: its
CA and certificates are in DIR/certs, and ops presents DIR/certs/admin.crt to
it (see ops --help).`,
		Example: `  ops dev up --nodes 3 --replicas 3
  ops dev status
  ops dev down --wipe
  ops dev up --sites 3`,
		RunE: groupRunE,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", defaultDevDir, "directory of the dev site")
	withEnv(cmd.PersistentFlags(), "dir")
	cmd.AddCommand(newDevUpCommand(o, &dir), newDevDownCommand(o, &dir), newDevStatusCommand(o, &dir))
	return cmd
}

// devUpFlags are the settings of dev up.
type devUpFlags struct {
	dir       string
	sites     int
	nodes     int
	replicas  int
	basePort  int
	shards    int
	bin       string
	relayBin  string
	race      bool
	plaintext bool
	readyWait time.Duration
}

func (f devUpFlags) validate() error {
	if f.sites != 1 {
		return f.validateSites()
	}
	switch {
	case f.nodes < 1 || f.nodes > maxDevNodes:
		return fmt.Errorf("--nodes %d: must be in [1, %d]", f.nodes, maxDevNodes)
	case f.replicas < 1 || f.replicas > f.nodes:
		return fmt.Errorf("--replicas %d: must be in [1, --nodes %d]", f.replicas, f.nodes)
	case f.shards < 1 || f.shards > 1024:
		return fmt.Errorf("--shards %d: must be in [1, 1024]", f.shards)
	case f.basePort < 1 || f.basePort+portStride*(f.nodes-1)+2 > 65535:
		return fmt.Errorf("--base-port %d: the ports of %d nodes must fit in [1, 65535]", f.basePort, f.nodes)
	case f.readyWait <= 0:
		return fmt.Errorf("--ready-timeout %s: must be positive", f.readyWait)
	}
	return nil
}

func newDevUpCommand(o *options, dir *string) *cobra.Command {
	f := devUpFlags{sites: 1, nodes: 3, replicas: 3, basePort: 7400, shards: 8, readyWait: time.Minute}
	var cmd *cobra.Command
	cmd = &cobra.Command{
		Use:   "up [--sites 1] [--nodes 3] [--replicas 3] [--dir ./aviary-dev] [--base-port 7400] [--shards 8]",
		Short: "Build cmd/node and start a local site in the background",
		Long: `Build cmd/node (go build, from the module root found above the current
directory) into DIR/bin/node, unless --bin names a binary, and start a site of
--nodes node processes in the background, each in its own process group, with
its data in DIR/node-i and its output in DIR/node-i/log. Node i listens on
127.0.0.1 at base+10i (gRPC), base+10i+1 (HTTP) and base+10i+2 (raft); node 0
founds the site with --shards shard trees and embeds the site's nats-server
(replication stream) on base+3; the others join it.

dev up waits until every node is in the map and ready, then, with --replicas
above 1, adds readable replicas of every shard tree rep-* on the next nodes,
round robin, in one change (the site is empty, so nothing needs copying). It
records the site in DIR/site.json and refuses to start over a running site.

With --sites S above 1 it starts S sites instead, named site-a, site-b, ...
with site ids 1 to S, each of --nodes nodes (default 1) with --replicas
readable replicas (default --nodes, at most 3), and links them: every site's
map lists every other site with the NATS URL of its embedded nats-server.
Then it builds cmd/relay into DIR/bin/relay (unless --relay-bin names one) and
starts one relay per site, which applies the other sites' streams through
that site's nodes. Site s (0 for site-a) has the ports base+100s to
base+100s+99: its node i listens at base+100s+10i (gRPC), +1 (HTTP) and +2
(raft), node 0's nats-server at base+100s+3, and the relay's HTTP (/metrics,
/healthz, /status) at base+100s+90; so at most 9 nodes per site. With the
default base 7400: site-a 7400-7499, site-b 7500-7599, site-c 7600-7699.
Node i of site X keeps its data and log in DIR/site-X/node-i, the relay its
log in DIR/site-X/relay/log.

Every link is mutual TLS 1.3 (gRPC, raft, NATS, relays), unless --plaintext.
The first dev up in DIR creates DIR/certs: a CA for the deployment's sites
(ca.crt, ca.key), a certificate per node (node-i, or SITE-node-i with
--sites; role node, for 127.0.0.1 and localhost), per relay (relay-SITE,
role relay) and admin.crt (role admin, no site) for ops and tests; later
ones reuse them. Nodes and relays are started with --tls-ca, --tls-cert and
--tls-key. ops uses admin.crt by itself for ./aviary-dev and for commands
given --dir (dev, drill, verify, repair); elsewhere give it
--tls-ca DIR/certs/ca.crt --tls-cert DIR/certs/admin.crt --tls-key
DIR/certs/admin.key (or AVIARY_OPS_TLS_CA, _CERT, _KEY). --plaintext starts
the old plaintext deployment instead (loopback only).`,
		Example: `  ops dev up
  ops dev up --nodes 5 --replicas 3 --dir /tmp/aviary --base-port 17400
  ops dev up --sites 3              # 3 sites of 1 node, 3 relays
  ops dev up --sites 3 --nodes 3    # 3 sites of 3 nodes`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			f.dir = *dir
			s.useDevDir(*dir)
			if f.sites == 1 {
				return s.devUp(ctx, f)
			}
			if !cmd.Flags().Changed("nodes") {
				f.nodes = 1
			}
			if !cmd.Flags().Changed("replicas") {
				f.replicas = min(f.nodes, 3)
			}
			return s.devUpSites(ctx, f)
		}),
	}
	fl := cmd.Flags()
	fl.IntVar(&f.sites, "sites", f.sites, "number of sites, each with its nodes and relay (ports: see above)")
	fl.IntVar(&f.nodes, "nodes", f.nodes, "number of node processes (of each site; default 1 with --sites above 1)")
	fl.IntVar(&f.replicas, "replicas", f.replicas, "readable replicas of every shard tree (at most --nodes; default --nodes, at most 3, with --sites above 1)")
	fl.IntVar(&f.basePort, "base-port", f.basePort, "first port; node i uses base+10i to base+10i+3 (with --sites, base+100s+10i for site s)")
	fl.IntVar(&f.shards, "shards", f.shards, "shard trees the site is seeded with")
	fl.StringVar(&f.bin, "bin", "", "node binary to run instead of building cmd/node")
	fl.StringVar(&f.relayBin, "relay-bin", "", "relay binary to run instead of building cmd/relay (with --sites above 1)")
	fl.BoolVar(&f.race, "race", false, "build the node (and relay) with the race detector (go build -race)")
	fl.BoolVar(&f.plaintext, "plaintext", false, "no TLS: nodes and relays in plaintext on loopback, no DIR/certs")
	fl.DurationVar(&f.readyWait, "ready-timeout", f.readyWait, "how long to wait for the nodes to be ready")
	return cmd
}

// devUp starts a dev site; on failure it stops what it started.
func (s *session) devUp(ctx context.Context, f devUpFlags) (err error) {
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
	site := &devSite{Dir: dir, StartedAt: time.Now().UTC()}
	for i := range f.nodes {
		p := f.basePort + portStride*i
		n := devNode{
			ID:       fmt.Sprintf("node-%d", i),
			GRPCAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p)),
			HTTPAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)),
			RaftAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p+2)),
			DataDir:  filepath.Join(dir, fmt.Sprintf("node-%d", i)),
		}
		n.Log = filepath.Join(n.DataDir, "log")
		site.Nodes = append(site.Nodes, n)
	}
	if err := portsFree(site.Nodes); err != nil {
		return err
	}
	var ids []tlsx.Identity
	for _, n := range site.Nodes {
		ids = append(ids, tlsx.Identity{Name: devNodeCert("", n.ID), Role: tlsx.RoleNode, Site: loneSite})
	}
	certs, err := s.prepareDevTLS(dir, f.plaintext, []string{loneSite}, ids)
	if err != nil {
		return err
	}
	site.CertsDir = certs.dir
	if _, err := os.Stat(site.Nodes[0].DataDir); err == nil {
		// The map records each node's addresses when it joins, and a node
		// already in the map does not update them.
		fmt.Fprintf(s.errOut, "note: %s holds the data of an earlier site: the nodes resume it, which works only with the same --base-port and --nodes; for a fresh site run: ops dev down --dir %s --wipe\n", dir, dir)
	}
	for _, n := range site.Nodes {
		if err := os.MkdirAll(n.DataDir, 0o755); err != nil {
			return fmt.Errorf("ops: %w", err)
		}
	}
	if site.Binary, err = s.nodeBinary(ctx, dir, f.bin, f.race); err != nil {
		return err
	}

	defer func() {
		if err != nil && len(site.live()) > 0 {
			fmt.Fprintf(s.errOut, "dev up failed; stopping the nodes it started (logs stay in %s)\n", dir)
			stopNodes(ctx, site.Nodes, stopGrace)
			_ = os.Remove(filepath.Join(dir, siteFile))
		}
	}()
	start := func(i int) error {
		n := &site.Nodes[i]
		args := append(devNodeArgs(site.Nodes, i, f.shards), "--site-name", loneSite)
		args = append(args, certs.args(devNodeCert("", n.ID))...)
		pid, err := startProcess(site.Binary, args, n.Log)
		if err != nil {
			return err
		}
		n.PID, n.Args = pid, args
		return site.write()
	}
	deadline := time.Now().Add(f.readyWait)
	if err := start(0); err != nil {
		return err
	}
	if _, err := s.waitDevSite(ctx, site.Nodes[:1], 0, deadline); err != nil {
		return err
	}
	for i := 1; i < f.nodes; i++ {
		if err := start(i); err != nil {
			return err
		}
	}
	v, err := s.waitDevSite(ctx, site.Nodes, 0, deadline)
	if err != nil {
		return err
	}
	if f.replicas > 1 {
		if v, err = s.addDevReplicas(ctx, site.Nodes, f.replicas, deadline); err != nil {
			return err
		}
	}
	site.MapVersion = v
	if err := site.write(); err != nil {
		return err
	}
	return s.printDevUp(site, f)
}

// devNodeArgs is the command line of node i of nodes: node 0 founds the
// site, the others join it.
func devNodeArgs(nodes []devNode, i, shards int) []string {
	n := nodes[i]
	args := []string{
		"--data-dir", n.DataDir, "--grpc-addr", n.GRPCAddr, "--http-addr", n.HTTPAddr, "--raft-addr", n.RaftAddr,
		"--node-id", n.ID, "--worker-id", strconv.Itoa(i), "--shards", strconv.Itoa(shards), "--log-format", "text",
		// node-0 embeds the site's nats-server: on the port after its raft port.
		"--nats-addr", natsAddr(n.RaftAddr),
	}
	if i > 0 {
		args = append(args, "--join", nodes[0].GRPCAddr)
	}
	return args
}

// addDevReplicas gives every shard tree rep-* of the site of nodes
// readable replicas on the next nodes (devReplicaSteps), waits until
// every node routes with the new map and returns its version.
func (s *session) addDevReplicas(ctx context.Context, nodes []devNode, replicas int, deadline time.Time) (uint64, error) {
	m, err := s.getMap(ctx, nodes[0].GRPCAddr)
	if err != nil {
		return 0, err
	}
	ids := make([]string, len(nodes))
	for i, n := range nodes {
		ids[i] = n.ID
	}
	steps, err := devReplicaSteps(m, ids, replicas)
	if err != nil {
		return 0, err
	}
	if len(steps) == 0 {
		return m.Version, nil
	}
	v, err := s.proposeAt(ctx, nodes[0].GRPCAddr, steps)
	if err != nil {
		return 0, err
	}
	return s.waitDevSite(ctx, nodes, v, deadline)
}

// portsFree checks that the nodes' ports can be bound now.
func portsFree(nodes []devNode) error {
	for _, n := range nodes {
		for _, addr := range []string{n.GRPCAddr, n.HTTPAddr, n.RaftAddr} {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("address %s of %s is in use; choose another --base-port", addr, n.ID)
			}
			_ = l.Close()
		}
	}
	return nil
}

// nodeBinary returns bin, or builds cmd/node into DIR/bin/node (with the
// race detector if race).
func (s *session) nodeBinary(ctx context.Context, dir, bin string, race bool) (string, error) {
	return s.devBinary(ctx, dir, "node", "--bin", bin, race)
}

// devBinary returns bin (given by flag), or builds cmd/NAME into
// DIR/bin/NAME (with the race detector if race).
func (s *session) devBinary(ctx context.Context, dir, name, flag, bin string, race bool) (string, error) {
	if bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return "", fmt.Errorf("ops: %s: %w", flag, err)
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("ops: %s: %w", flag, err)
		}
		return abs, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "bin", name)
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/"+name)
	fmt.Fprintf(s.errOut, "building ./cmd/%s in %s: go %s\n", name, root, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("ops: go %s in %s: %w: %s", strings.Join(args, " "), root, err, oneLine(string(b)))
	}
	return out, nil
}

// moduleRoot walks up from the working directory to the go.mod of the
// Aviary module.
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("ops: %w", err)
	}
	for dir := wd; ; {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil {
			if p := goModPath(b); p != modulePath {
				return "", fmt.Errorf("ops: %s is module %q, not %s: run dev up inside the Aviary source tree, or give --bin", filepath.Join(dir, "go.mod"), p, modulePath)
			}
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("ops: no go.mod above %s: run dev up inside the Aviary source tree, or give --bin", wd)
		}
		dir = parent
	}
}

// goModPath returns the module path of a go.mod file.
func goModPath(b []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(p), `"`)
		}
	}
	return ""
}

// waitDevSite polls until every one of nodes runs, is in the map of the
// first, is ready and routes with that map's version (and at least
// version). It returns the version. A node that exits fails it at once.
func (s *session) waitDevSite(ctx context.Context, nodes []devNode, version uint64, deadline time.Time) (uint64, error) {
	var last error
	for {
		for _, n := range nodes {
			if !processAlive(n.PID) {
				return 0, fmt.Errorf("%s (pid %d) exited; the end of %s: %s", n.ID, n.PID, n.Log, tail(n.Log, 3))
			}
		}
		v, err := s.devSiteReady(ctx, nodes, version)
		if err == nil {
			return v, nil
		}
		last = err
		if !time.Now().Before(deadline) {
			return 0, fmt.Errorf("ops: the dev site is not ready in time (--ready-timeout): %w", last)
		}
		if err := timex.Sleep(ctx, 100*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// devSiteReady reports why nodes are not all ready at one map version.
func (s *session) devSiteReady(ctx context.Context, nodes []devNode, version uint64) (uint64, error) {
	m, err := s.getMap(ctx, nodes[0].GRPCAddr)
	if err != nil {
		return 0, err
	}
	if m.Version < version {
		return 0, fmt.Errorf("%s has map version %d, want %d", nodes[0].ID, m.Version, version)
	}
	for _, n := range nodes {
		if _, ok := m.Nodes[n.ID]; !ok {
			return 0, fmt.Errorf("%s is not in the map yet", n.ID)
		}
		p := s.probeNode(ctx, n.ID, n.GRPCAddr)
		switch {
		case !p.Ready:
			return 0, fmt.Errorf("%s: %s", n.ID, statusCell(p))
		case p.MapVersion < m.Version:
			return 0, fmt.Errorf("%s routes with map version %d, want %d", n.ID, p.MapVersion, m.Version)
		}
	}
	return m.Version, nil
}

// devReplicaSteps adds readable replicas to every replicating root rep-*
// of m until each has replicas physical shards: root j's go on the nodes
// after the node of its first leaf, shifted by j, skipping nodes that hold
// one already.
func devReplicaSteps(m *gizzard.Map, nodes []string, replicas int) ([]gizzard.Step, error) {
	var steps []gizzard.Step
	j := 0
	for _, root := range m.Roots() {
		if !strings.HasPrefix(root, "rep-") || m.Shards[root].Kind != gizzard.KindReplicating {
			continue
		}
		leaves := leavesUnder(m, root)
		held := map[string]bool{}
		first := 0
		for i, l := range leaves {
			held[l.Node] = true
			if i == 0 {
				first = max(slices.Index(nodes, l.Node), 0)
			}
		}
		have := len(leaves)
		for k := 1; k <= len(nodes) && have < replicas; k++ {
			n := nodes[(first+j+k)%len(nodes)]
			if held[n] {
				continue
			}
			_, add, err := planReplicaAdd(m, root, n, "", true, 1)
			if err != nil {
				return nil, err
			}
			steps = append(steps, add...)
			held[n] = true
			have++
		}
		j++
	}
	return steps, nil
}

// tail returns the last n lines of a file, joined by " | ".
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func (s *session) printDevUp(site *devSite, f devUpFlags) error {
	if s.o.json {
		return s.printJSON(site)
	}
	fmt.Fprintf(s.out, "dev site up in %s: %d nodes, %d shard trees with %d readable replicas each, map version %d\n\n",
		site.Dir, len(site.Nodes), f.shards, f.replicas, site.MapVersion)
	t := newTable("NODE", "PID", "GRPC", "HTTP", "RAFT", "LOG")
	for _, n := range site.Nodes {
		t.add(n.ID, strconv.Itoa(n.PID), n.GRPCAddr, n.HTTPAddr, n.RaftAddr, n.Log)
	}
	if err := s.printTable(t); err != nil {
		return err
	}
	addr := site.Nodes[0].GRPCAddr
	fmt.Fprintf(s.out, "\n%s", devTLSNote(site))
	_, err := fmt.Fprintf(s.out, `
next:
  export AVIARY_OPS_ADDR=%s%s
  ops ping
  ops tree show
  ops lookup statuses 1001
  ops dev status --dir %s
  ops dev down --dir %s --wipe
`, addr, devTLSExports(site), site.Dir, site.Dir)
	return err
}

// stopOutcome says how a node process ended.
type stopOutcome struct {
	ID      string `json:"id"`
	PID     int    `json:"pid"`
	Outcome string `json:"outcome"`
}

// stopNodes sends SIGTERM to the nodes' running processes, waits up to
// grace for them to exit, then sends SIGKILL to the rest.
func stopNodes(ctx context.Context, nodes []devNode, grace time.Duration) []stopOutcome {
	out := make([]stopOutcome, len(nodes))
	for i, n := range nodes {
		out[i] = stopOutcome{ID: n.ID, PID: n.PID, Outcome: "not running"}
		if n.PID > 0 && processAlive(n.PID) {
			if err := terminate(n.PID); err != nil {
				out[i].Outcome = err.Error()
				continue
			}
			out[i].Outcome = "stopped"
		}
	}
	waitGone := func(until time.Time) bool {
		for {
			alive := false
			for i, n := range nodes {
				if out[i].Outcome == "stopped" && processAlive(n.PID) {
					alive = true
				}
			}
			if !alive {
				return true
			}
			if !time.Now().Before(until) || timex.Sleep(ctx, 50*time.Millisecond) != nil {
				return false
			}
		}
	}
	if waitGone(time.Now().Add(grace)) {
		return out
	}
	for i, n := range nodes {
		if out[i].Outcome == "stopped" && processAlive(n.PID) {
			_ = kill(n.PID)
			out[i].Outcome = fmt.Sprintf("killed: still running %s after SIGTERM", grace)
		}
	}
	waitGone(time.Now().Add(5 * time.Second))
	return out
}

// looksLikeDevDir reports whether dir holds what dev up creates, so that
// --wipe never removes an unrelated directory.
func looksLikeDevDir(dir string) bool {
	for _, p := range []string{siteFile, filepath.Join("bin", "node"), "node-0", filepath.Join("bin", "relay"), devSiteName(0)} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			return true
		}
	}
	return false
}

func newDevDownCommand(o *options, dir *string) *cobra.Command {
	var wipe bool
	cmd := &cobra.Command{
		Use:   "down [--dir ./aviary-dev] [--wipe]",
		Short: "Stop a local site started by dev up",
		Long: `Stop the node processes of the dev site in --dir: SIGTERM to each, up to 20s
for it to shut down gracefully, then SIGKILL. Removes DIR/site.json, and with
--wipe the whole directory: data, logs and binary. A deployment of several
sites (dev up --sites) has its relays stopped first, then its nodes.`,
		Example: `  ops dev down
  ops dev down --dir /tmp/aviary --wipe`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			s.useDevDir(*dir)
			d, err := filepath.Abs(*dir)
			if err != nil {
				return fmt.Errorf("ops: --dir: %w", err)
			}
			site, err := readSite(d)
			if errors.Is(err, fs.ErrNotExist) {
				if wipe && looksLikeDevDir(d) {
					if err := os.RemoveAll(d); err != nil {
						return fmt.Errorf("ops: wipe: %w", err)
					}
					_, err = fmt.Fprintf(s.out, "no site was running; wiped %s\n", d)
					return err
				}
				return fmt.Errorf("%w in %s (no %s)", ErrNoSite, d, siteFile)
			}
			if err != nil {
				return err
			}
			header := "NODE"
			var outcomes []stopOutcome
			if len(site.Sites) > 0 {
				// Relays first: they apply through the nodes.
				header = "PROCESS"
				outcomes = stopNodes(ctx, site.relayProcs(), stopGrace)
				outcomes = append(outcomes, stopNodes(ctx, site.siteNodeProcs(), stopGrace)...)
			} else {
				outcomes = stopNodes(ctx, site.Nodes, stopGrace)
			}
			if err := os.Remove(filepath.Join(d, siteFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("ops: %w", err)
			}
			if wipe {
				if err := os.RemoveAll(d); err != nil {
					return fmt.Errorf("ops: wipe: %w", err)
				}
			}
			t := newTable(header, "PID", "OUTCOME")
			for _, oc := range outcomes {
				t.add(oc.ID, strconv.Itoa(oc.PID), oc.Outcome)
			}
			if err := s.emit(outcomes, t); err != nil {
				return err
			}
			if wipe && !s.o.json {
				fmt.Fprintf(s.out, "wiped %s\n", d)
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&wipe, "wipe", false, "also remove the directory: data, logs and binary")
	return cmd
}

func newDevStatusCommand(o *options, dir *string) *cobra.Command {
	return &cobra.Command{
		Use:   "status [--dir ./aviary-dev]",
		Short: "Show whether the nodes of a dev site run and agree",
		Long: `Show the node processes of the dev site in --dir and whether each runs, then
ping the site through a running node. The exit status is 1 if a node is not
running or the nodes do not agree. For a deployment of several sites (dev up
--sites) it shows every site's nodes, its relay (running, and its /healthz),
and pings each site; a relay that is not running or not healthy is an error
too.`,
		Example: `  ops dev status
  ops dev status --dir /tmp/aviary --json`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			s.useDevDir(*dir)
			d, err := filepath.Abs(*dir)
			if err != nil {
				return fmt.Errorf("ops: --dir: %w", err)
			}
			site, err := readSite(d)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%w in %s (no %s); start one with: ops dev up --dir %s", ErrNoSite, d, siteFile, d)
			}
			if err != nil {
				return err
			}
			if len(site.Sites) > 0 {
				return s.devStatusSites(ctx, site)
			}
			type procRow struct {
				devNode
				Running bool `json:"running"`
			}
			rows := []procRow{}
			var down []string
			var addr string
			t := newTable("NODE", "PID", "RUNNING", "GRPC", "LOG")
			for _, n := range site.Nodes {
				alive := processAlive(n.PID)
				rows = append(rows, procRow{n, alive})
				t.add(n.ID, strconv.Itoa(n.PID), strconv.FormatBool(alive), n.GRPCAddr, n.Log)
				if !alive {
					down = append(down, n.ID)
				} else if addr == "" {
					addr = n.GRPCAddr
				}
			}
			var report *pingReport
			var pingErr error
			if addr != "" {
				r, err := s.ping(ctx, addr, 0)
				if err != nil {
					pingErr = err
				} else {
					report = &r
				}
			}
			if s.o.json {
				if err := s.printJSON(struct {
					Dir   string      `json:"dir"`
					Nodes []procRow   `json:"nodes"`
					Ping  *pingReport `json:"ping,omitempty"`
				}{d, rows, report}); err != nil {
					return err
				}
			} else {
				if err := s.printTable(t); err != nil {
					return err
				}
				if report != nil {
					fmt.Fprintln(s.out)
					if err := s.printPing(*report); err != nil {
						pingErr = err
					}
				}
			}
			switch {
			case len(down) > 0:
				return fmt.Errorf("ops: dev site in %s: not running: %s", d, strings.Join(down, ", "))
			case pingErr != nil:
				return pingErr
			case report != nil && !report.Agree:
				return fmt.Errorf("%w: %s", ErrNotAgreed, report.summary())
			}
			return nil
		}),
	}
}

// natsAddr is the embedded nats-server address of a dev node: the port
// after its raft port.
func natsAddr(raft string) string {
	host, port, err := net.SplitHostPort(raft)
	if err != nil {
		return "127.0.0.1:0"
	}
	p, _ := strconv.Atoi(port)
	return net.JoinHostPort(host, strconv.Itoa(p+1))
}
