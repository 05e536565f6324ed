package ops

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/testnet"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// freeSitesBasePort finds a base port whose dev ports for that many one-node
// sites (base+100s+0..3 and the relay's base+100s+90) are free now (see
// testnet.Ports).
func freeSitesBasePort(t *testing.T, sites int) int {
	t.Helper()
	return testnet.Ports(t, siteStride*sites, func(base int) (ports []int) {
		for s := range sites {
			for _, off := range []int{0, 1, 2, 3, relayPortOffset} {
				ports = append(ports, base+siteStride*s+off)
			}
		}
		return ports
	})
}

// TestDevSitesLayout checks the port scheme and limits of dev up --sites.
func TestDevSitesLayout(t *testing.T) {
	f := devUpFlags{sites: 3, nodes: 3, replicas: 3, basePort: 7400, shards: 8, readyWait: time.Minute}
	if err := f.validate(); err != nil {
		t.Fatal(err)
	}
	sites := devSitesLayout("/d", f)
	if len(sites) != 3 {
		t.Fatalf("%d sites", len(sites))
	}
	b := sites[1]
	n1 := b.Nodes[1]
	if b.Name != "site-b" || b.ID != 2 || n1.ID != "node-1" || n1.GRPCAddr != "127.0.0.1:7510" || n1.HTTPAddr != "127.0.0.1:7511" ||
		n1.RaftAddr != "127.0.0.1:7512" || natsAddr(b.Nodes[0].RaftAddr) != "127.0.0.1:7503" || n1.DataDir != "/d/site-b/node-1" || n1.Log != "/d/site-b/node-1/log" {
		t.Fatalf("site-b: %+v", b)
	}
	want := []string{"--addr", "127.0.0.1:7500,127.0.0.1:7510,127.0.0.1:7520", "--http-addr", "127.0.0.1:7590", "--log-format", "text",
		"--tls-ca", "/d/certs/ca.crt", "--tls-cert", "/d/certs/relay-site-b.crt", "--tls-key", "/d/certs/relay-site-b.key"}
	if !slices.Equal(b.Relay.Args, want) || b.Relay.Log != "/d/site-b/relay/log" {
		t.Fatalf("site-b's relay: %+v", b.Relay)
	}
	f.plaintext = true
	if args := devSitesLayout("/d", f)[1].Relay.Args; !slices.Equal(args, want[:6]) {
		t.Fatalf("site-b's relay with --plaintext: %v", args)
	}
	f.plaintext = false
	if c := sites[2]; c.Nodes[0].GRPCAddr != "127.0.0.1:7600" || c.Relay.HTTPAddr != "127.0.0.1:7690" {
		t.Fatalf("site-c: %+v", c)
	}
	for _, bad := range []devUpFlags{
		{sites: 3, nodes: 10, replicas: 1, basePort: 7400, shards: 8, readyWait: time.Minute},
		{sites: 27, nodes: 1, replicas: 1, basePort: 7400, shards: 8, readyWait: time.Minute},
		{sites: 0, nodes: 1, replicas: 1, basePort: 7400, shards: 8, readyWait: time.Minute},
		{sites: 3, nodes: 1, replicas: 2, basePort: 7400, shards: 8, readyWait: time.Minute},
		{sites: 3, nodes: 1, replicas: 1, basePort: 65300, shards: 8, readyWait: time.Minute},
	} {
		if err := bad.validate(); err == nil {
			t.Errorf("validate accepts %+v", bad)
		}
	}
	help := mustOps(t, "dev", "up", "--help")
	for _, w := range []string{"--sites", "base+100s+10i", "base+100s+90", "site-c 7600-7699", "DIR/site-X/relay/log", "--relay-bin",
		"--plaintext", "DIR/certs", "relay-SITE", "admin.crt"} {
		if !strings.Contains(help, w) {
			t.Errorf("dev up --help lacks %q", w)
		}
	}
}

// devSeed returns AVIARY_SEED if set, else a fresh seed; it logs it.
func devSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("AVIARY_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("bad AVIARY_SEED %q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed=%d (replay with AVIARY_SEED=%d)", seed, seed)
	return seed
}

// lwwVersion orders acknowledged writes by last-writer-wins: (hlc, site).
type lwwVersion struct {
	hlc  uint64
	site uint32
}

func (v lwwVersion) newer(w lwwVersion) bool {
	return v.hlc > w.hlc || v.hlc == w.hlc && v.site > w.site
}

// ackHistory is the newest acknowledged write of every key, and whether
// it was a delete.
type ackHistory struct {
	mu   sync.Mutex
	last map[string]lwwVersion
	del  map[string]bool
}

func (h *ackHistory) ack(key string, v lwwVersion, deleted bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cur, ok := h.last[key]; !ok || v.newer(cur) {
		h.last[key], h.del[key] = v, deleted
	}
}

// devSiteClients are clients of a dev site's node-0.
type devSiteClients struct {
	name  string
	data  pb.DataClient
	admin pb.ShardAdminClient
}

// TestDevSitesRelayKilled starts three one-node sites with their relays
// (dev up --sites 3), writes conflicting puts and deletes of a shared key
// space at all three while site-b's relay is killed with SIGKILL at random
// points and started again with the same command line, three times; once
// writes stop, every site returns the newest acknowledged write of every
// key and the sites' shards are equal, site-b's relay status shows both
// paths and none stalled, and dev down --wipe stops everything.
func TestDevSitesRelayKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/node and cmd/relay and runs three sites of processes")
	}
	const shards = 4
	dir := filepath.Join(t.TempDir(), "sites")
	var mu sync.Mutex
	var extra []int // relay pids started by the test
	// Whatever happens, no process outlives the test.
	t.Cleanup(func() {
		mu.Lock()
		pids := append([]int(nil), extra...)
		mu.Unlock()
		if site, err := readSite(dir); err == nil {
			for _, p := range site.procs() {
				pids = append(pids, p.PID)
			}
		}
		for _, pid := range pids {
			if processAlive(pid) {
				_ = kill(pid)
			}
		}
	})
	seed := devSeed(t)
	base := freeSitesBasePort(t, 3)
	args := []string{"dev", "up", "--sites", "3", "--shards", strconv.Itoa(shards),
		"--dir", dir, "--base-port", strconv.Itoa(base), "--timeout", "10s"}
	if raceEnabled {
		args = append(args, "--race")
	}
	start := time.Now()
	out := mustOps(t, args...)
	t.Logf("dev up (%s):\n%s", time.Since(start).Round(time.Millisecond), out)

	site, err := readSite(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(site.Sites) != 3 || len(site.Nodes) != 0 {
		t.Fatalf("site.json lists %d sites and %d lone nodes", len(site.Sites), len(site.Nodes))
	}
	admin := devAdmin(t, dir)
	tlsArgs := devTLSArgs(dir)
	clients := make([]devSiteClients, 3)
	for s, st := range site.Sites {
		p := base + siteStride*s
		if st.Name != devSiteName(s) || st.ID != uint32(s+1) || len(st.Nodes) != 1 {
			t.Fatalf("site %d in site.json: %+v", s, st)
		}
		n := st.Nodes[0]
		if n.GRPCAddr != net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) || !processAlive(n.PID) ||
			st.NATSURL != fmt.Sprintf("tls://127.0.0.1:%d", p+3) || n.DataDir != filepath.Join(dir, st.Name, "node-0") {
			t.Fatalf("%s's node in site.json: %+v, nats %s (running %v)", st.Name, n, st.NATSURL, processAlive(n.PID))
		}
		r := st.Relay
		if r.HTTPAddr != net.JoinHostPort("127.0.0.1", strconv.Itoa(p+relayPortOffset)) || r.Log != filepath.Join(dir, st.Name, "relay", "log") || !processAlive(r.PID) {
			log, _ := os.ReadFile(r.Log)
			t.Fatalf("%s's relay in site.json: %+v (running %v); its log:\n%s", st.Name, r, processAlive(r.PID), log)
		}
		cc := dialAs(t, admin, n.GRPCAddr)
		clients[s] = devSiteClients{name: st.Name, data: pb.NewDataClient(cc), admin: pb.NewShardAdminClient(cc)}
	}
	addrA, addrB := site.Sites[0].Nodes[0].GRPCAddr, site.Sites[1].Nodes[0].GRPCAddr
	if out := mustOps(t, append(tlsArgs, "--addr", addrA, "sites")...); strings.Count(out, "tls://127.0.0.1:") != 3 {
		t.Fatalf("site-a's map does not list 3 sites:\n%s", out)
	}
	if _, _, err := runOps(t, "dev", "up", "--sites", "3", "--dir", dir, "--base-port", strconv.Itoa(base)); !errors.Is(err, ErrSiteRunning) {
		t.Fatalf("dev up over a running deployment: %v", err)
	}
	mustOps(t, "dev", "status", "--dir", dir)

	// Conflicting puts and deletes of 100 keys at the three sites.
	h := &ackHistory{last: map[string]lwwVersion{}, del: map[string]bool{}}
	var errs []error
	ctx, stop := context.WithCancel(t.Context())
	var writers sync.WaitGroup
	var writes [3]int
	for s, c := range clients {
		rng := rand.New(rand.NewPCG(seed, uint64(s)))
		writers.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				key := fmt.Sprintf("k%03d", rng.IntN(100))
				deleted := rng.IntN(5) == 0
				var r *pb.WriteResult
				var err error
				if deleted {
					r, err = c.data.Delete(t.Context(), &pb.DeleteRequest{Table: "statuses", Key: []byte(key)})
				} else {
					r, err = c.data.Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte(key), Value: fmt.Appendf(nil, "%s from %s #%d", key, c.name, n)})
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %s: %w", c.name, key, err))
					mu.Unlock()
					continue
				}
				h.ack(key, lwwVersion{r.Version.Hlc, r.Version.Site}, deleted)
				writes[s]++
			}
		})
	}

	// Meanwhile, kill site-b's relay at random points and start it again.
	rng := rand.New(rand.NewPCG(seed, 99))
	relay := &site.Sites[1].Relay
	for k := range 3 {
		time.Sleep(time.Duration(300+rng.IntN(700)) * time.Millisecond) // a random point of the load
		pid := relay.PID
		if !processAlive(pid) {
			t.Fatalf("site-b's relay (pid %d) is not running before kill %d; its log: %s", pid, k+1, tail(relay.Log, 5))
		}
		if err := kill(pid); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 10*time.Second, func() error {
			if processAlive(pid) {
				return fmt.Errorf("pid %d still runs after SIGKILL", pid)
			}
			return nil
		})
		time.Sleep(time.Duration(50+rng.IntN(300)) * time.Millisecond) // the relay stays down a while
		npid, err := startProcess(site.RelayBinary, relay.Args, relay.Log)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		extra = append(extra, npid)
		mu.Unlock()
		relay.PID = npid
		if err := site.write(); err != nil { // so that dev down stops this one
			t.Fatal(err)
		}
		t.Logf("kill %d: site-b's relay pid %d killed, restarted as pid %d", k+1, pid, npid)
	}
	time.Sleep(time.Duration(200+rng.IntN(300)) * time.Millisecond) // load after the last restart
	stop()
	writers.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("writes failed: %v", err)
	}
	t.Logf("%d, %d and %d writes acknowledged at site-a, site-b and site-c; %d keys", writes[0], writes[1], writes[2], len(h.last))

	// Every site converges on the newest acknowledged write of every key.
	// A relay killed mid-batch leaves messages delivered and not
	// acknowledged, which its source delivers again only after the ack wait
	// (replication.AckWait, 30s).
	converged := func() error {
		for i := range shards {
			shard := fmt.Sprintf("default-%03d", i)
			var first []byte
			for _, c := range clients {
				d, err := c.admin.DigestData(t.Context(), &pb.DigestDataRequest{Shard: shard})
				if err != nil {
					return fmt.Errorf("%s: digest %s: %w", c.name, shard, err)
				}
				if first == nil {
					first = d.Sum
				} else if string(d.Sum) != string(first) {
					return fmt.Errorf("%s of %s differs from site-a's (%d records)", shard, c.name, d.Records)
				}
			}
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		for key, want := range h.last {
			for _, c := range clients {
				r, err := c.data.Get(t.Context(), &pb.GetRequest{Table: "statuses", Key: []byte(key)})
				if h.del[key] {
					if status.Code(err) != codes.NotFound {
						return fmt.Errorf("%s: key %s: want deleted (at %d@%d), got %v %v", c.name, key, want.hlc, want.site, r, err)
					}
					continue
				}
				if err != nil {
					return fmt.Errorf("%s: key %s: %w", c.name, key, err)
				}
				if got := (lwwVersion{r.Version.Hlc, r.Version.Site}); got != want {
					return fmt.Errorf("%s: key %s: version %d@%d, want %d@%d", c.name, key, got.hlc, got.site, want.hlc, want.site)
				}
			}
		}
		return nil
	}
	start = time.Now()
	checkFor(t, 90*time.Second, converged)
	t.Logf("converged %s after the writes stopped", time.Since(start).Round(time.Millisecond))

	// site-b's relay status: a path from each other site, none stalled.
	var rs string
	checkFor(t, 15*time.Second, func() error {
		out, _, err := runOps(t, append(tlsArgs, "--addr", addrB, "relay", "status")...)
		if err != nil {
			return err
		}
		rs = out
		paths, _, _ := strings.Cut(out, "\n\n")
		lines := strings.Split(strings.TrimSpace(paths), "\n")
		var got []string
		for _, l := range lines[1:] {
			got = append(got, strings.Fields(l)[0])
		}
		slices.Sort(got)
		if !strings.HasPrefix(lines[0], "PATH ") || !slices.Equal(got, []string{"site-a/node-0", "site-c/node-0"}) {
			return fmt.Errorf("want the paths site-a/node-0 and site-c/node-0:\n%s", out)
		}
		if strings.Contains(out, "STALLED") {
			return fmt.Errorf("a path is stalled:\n%s", out)
		}
		return nil
	})
	t.Logf("site-b's relay status:\n%s", rs)

	out = mustOps(t, "dev", "down", "--dir", dir, "--wipe")
	t.Logf("dev down:\n%s", out)
	if !strings.Contains(out, "site-b/relay") || strings.Index(out, "site-c/relay") > strings.Index(out, "site-a/node-0") {
		t.Errorf("dev down does not stop the relays first:\n%s", out)
	}
	for _, p := range site.procs() {
		if processAlive(p.PID) {
			t.Errorf("%s (pid %d) still runs after dev down", p.ID, p.PID)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("dev down --wipe left %s: %v", dir, err)
	}
}
