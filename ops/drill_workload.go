package ops

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/api/client"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/internal/tlsx"
	"golang.org/x/time/rate"
)

// A drill's verifying workload: a client per site writes numbered records
// to every shard of its site's map, preferring its own site and failing over
// to the others (the failover target first). Every acknowledged write is
// appended to the drill's acked file before the next is sent, so the drill
// counts its RPO in records: which acknowledged writes a site lacks.

// drillTable is the content table the workload writes; every site's map
// has it (node.DefaultTables).
const drillTable = "statuses"

// multiGetBatch bounds the keys of one MultiGet of a presence check.
const multiGetBatch = 500

// vwrite is one acknowledged verifying write.
type vwrite struct {
	Key   string    `json:"key"`
	N     uint64    `json:"n"`
	Home  string    `json:"home"` // the site whose client wrote it
	Site  string    `json:"site"` // the site that acknowledged it
	At    time.Time `json:"at"`
	Phase string    `json:"phase"`
}

// value is what the workload writes under a key: its number.
func (w vwrite) value() []byte { return binary.BigEndian.AppendUint64(nil, w.N) }

// drillLoad is the verifying workload: it runs the verifying writes of one drill.
type drillLoad struct {
	id    string
	sites []devSubsite
	rate  float64 // writes per second per site

	clients map[string]*client.Sites
	maps    map[string]*gizzard.Map // per home site: its map when the workload began
	roots   map[string][]string     // per home site: its map's trees of drillTable

	mu       sync.Mutex
	file     *os.File
	acked    []vwrite
	next     map[string]uint64 // per home site: the next number
	failed   map[string]int    // per home site: attempts not acknowledged
	phase    string
	switches []clientSwitch
}

// clientSwitch is a workload client moving from one site to another.
type clientSwitch struct {
	At     time.Time `json:"at"`
	Home   string    `json:"home"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Reason string    `json:"reason"`
}

// preference is the order of sites a client of home tries: home, then
// prefer (the drill's failover target), then the others in deployment order.
func preference(sites []devSubsite, home, prefer string) []devSubsite {
	out := []devSubsite{}
	add := func(name string) {
		for _, st := range sites {
			if st.Name == name && !slices.ContainsFunc(out, func(o devSubsite) bool { return o.Name == name }) {
				out = append(out, st)
			}
		}
	}
	add(home)
	add(prefer)
	for _, st := range sites {
		add(st.Name)
	}
	return out
}

func siteAddrs(st devSubsite) []string {
	addrs := make([]string, len(st.Nodes))
	for i, n := range st.Nodes {
		addrs[i] = n.GRPCAddr
	}
	return addrs
}

// newDrillLoad prepares the workload of drill id: its clients (with TLS by
// src, nil for plaintext), each home site's trees (from maps, one per
// site, by name) and the acked file at path, whose earlier records it
// loads (a failback continues the failover's numbering).
func newDrillLoad(id string, sites []devSubsite, maps map[string]*gizzard.Map, prefer string, perSite float64, path string, src *tlsx.Source) (*drillLoad, error) {
	w := &drillLoad{id: id, sites: sites, rate: perSite, clients: map[string]*client.Sites{}, maps: maps, roots: map[string][]string{},
		next: map[string]uint64{}, failed: map[string]int{}}
	prior, err := readAcked(path)
	if err != nil {
		return nil, err
	}
	w.acked = prior
	for _, v := range prior {
		w.next[v.Home] = max(w.next[v.Home], v.N+1)
	}
	for _, st := range sites {
		m := maps[st.Name]
		if m == nil {
			w.close()
			return nil, fmt.Errorf("ops: drill workload: no map of %s", st.Name)
		}
		for _, f := range m.Forwardings[drillTable] {
			if !slices.Contains(w.roots[st.Name], f.Root) {
				w.roots[st.Name] = append(w.roots[st.Name], f.Root)
			}
		}
		if len(w.roots[st.Name]) == 0 {
			w.close()
			return nil, fmt.Errorf("ops: drill workload: %s's map has no table %q", st.Name, drillTable)
		}
		var sites []client.Site
		for _, p := range preference(w.sites, st.Name, prefer) {
			sites = append(sites, client.Site{Name: p.Name, Addrs: siteAddrs(p)})
		}
		home := st.Name
		c, err := client.DialSites(sites, client.WithTLS(src), client.OnSwitch(func(from, to, reason string) {
			w.mu.Lock()
			w.switches = append(w.switches, clientSwitch{At: time.Now(), Home: home, From: from, To: to, Reason: reason})
			w.mu.Unlock()
		}))
		if err != nil {
			w.close()
			return nil, err
		}
		w.clients[st.Name] = c
	}
	if w.file, err = os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		w.close()
		return nil, fmt.Errorf("ops: drill workload: %w", err)
	}
	return w, nil
}

// readAcked reads an acked file; a missing one is empty.
func readAcked(path string) ([]vwrite, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ops: %w", err)
	}
	defer f.Close()
	var out []vwrite
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		var v vwrite
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			// A torn last line (the drill was killed mid-write) was never
			// counted as acknowledged.
			if !sc.Scan() {
				break
			}
			return nil, fmt.Errorf("ops: %s:%d: %w", path, line, err)
		}
		out = append(out, v)
	}
	return out, sc.Err()
}

func (w *drillLoad) close() {
	for _, c := range w.clients {
		_ = c.Close()
	}
	if w.file != nil {
		_ = w.file.Close()
	}
}

// setPhase names the phase that later writes are recorded in.
func (w *drillLoad) setPhase(p string) {
	w.mu.Lock()
	w.phase = p
	w.mu.Unlock()
}

// key returns the key of write n of home: it lands on tree n mod k of the
// home site's map, so the writes cover every shard (a tree whose hash range
// is too thin to hit in keyTries gets a key of another).
func (w *drillLoad) key(home string, n uint64) string {
	roots := w.roots[home]
	want := roots[n%uint64(len(roots))]
	base := fmt.Sprintf("drill/%s/%s/%d", w.id, home, n)
	for j := range keyTries {
		k := base + "." + strconv.Itoa(j)
		if f, err := w.maps[home].Lookup(drillTable, gizzard.Hash([]byte(k))); err == nil && f.Root == want {
			return k
		}
	}
	return base
}

// keyTries bounds the search for a key of a given tree.
const keyTries = 1 << 16

// run writes from every site until ctx ends.
func (w *drillLoad) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, st := range w.sites {
		wg.Go(func() { w.runSite(ctx, st.Name) })
	}
	wg.Wait()
}

func (w *drillLoad) runSite(ctx context.Context, home string) {
	lim := rate.NewLimiter(rate.Limit(w.rate), 1)
	c := w.clients[home]
	for {
		if err := lim.Wait(ctx); err != nil {
			return
		}
		w.mu.Lock()
		n := w.next[home]
		w.next[home]++
		w.mu.Unlock()
		v := vwrite{Key: w.key(home, n), N: n, Home: home}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := c.Put(cctx, &pb.PutRequest{Table: drillTable, Key: []byte(v.Key), Value: v.value()})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.mu.Lock()
			w.failed[home]++
			w.mu.Unlock()
			continue
		}
		// The version names the site that took the write.
		v.Site, v.At = w.siteName(r.GetVersion().GetSite()), time.Now()
		w.record(v)
	}
}

// record appends an acknowledged write to memory and the acked file.
func (w *drillLoad) record(v vwrite) {
	w.mu.Lock()
	defer w.mu.Unlock()
	v.Phase = w.phase
	w.acked = append(w.acked, v)
	if b, err := json.Marshal(v); err == nil {
		_, _ = w.file.Write(append(b, '\n'))
	}
}

// snapshot returns the acknowledged writes so far.
func (w *drillLoad) snapshot() []vwrite {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acked)
}

// missingAt returns the writes of ws that the site c reaches does not hold
// (absent, or holding another value). A read reaches one replica, which may not have a write its site journaled yet: a write
// counts as missing only if missingReads reads, missingGap apart, all miss
// it.
func missingAt(ctx context.Context, c *client.Client, ws []vwrite) (_ []vwrite, err error) {
	for i := 0; i < missingReads && len(ws) > 0; i++ {
		if i > 0 {
			if err := timex.Sleep(ctx, missingGap); err != nil {
				return nil, err
			}
		}
		if ws, err = readMissing(ctx, c, ws); err != nil {
			return nil, err
		}
	}
	return ws, nil
}

const (
	missingReads = 3
	missingGap   = 100 * time.Millisecond
)

// readMissing reads ws once and returns those the read did not find.
func readMissing(ctx context.Context, c *client.Client, ws []vwrite) ([]vwrite, error) {
	var missing []vwrite
	for start := 0; start < len(ws); start += multiGetBatch {
		batch := ws[start:min(start+multiGetBatch, len(ws))]
		req := &pb.MultiGetRequest{Table: drillTable}
		for _, v := range batch {
			req.Keys = append(req.Keys, []byte(v.Key))
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := c.MultiGet(cctx, req)
		cancel()
		if err != nil {
			return nil, err
		}
		if len(resp.Items) != len(batch) {
			return nil, fmt.Errorf("ops: multiget of %d keys answered %d", len(batch), len(resp.Items))
		}
		for i, it := range resp.Items {
			if !it.Found || string(it.Value) != string(batch[i].value()) {
				missing = append(missing, batch[i])
			}
		}
	}
	return missing, nil
}

// switchesSnapshot returns the clients' site switches so far.
func (w *drillLoad) switchesSnapshot() []clientSwitch {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.switches)
}

// siteWrites counts a home site's verifying writes.
type siteWrites struct {
	Acked  int            `json:"acked"`
	Failed int            `json:"failed"`  // attempts not acknowledged (refused, unreachable, timed out)
	BySite map[string]int `json:"by_site"` // acknowledged, by the site that acknowledged them
}

// counts returns the writes of every home site.
func (w *drillLoad) counts() map[string]siteWrites {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]siteWrites{}
	for _, st := range w.sites {
		out[st.Name] = siteWrites{Failed: w.failed[st.Name], BySite: map[string]int{}}
	}
	for _, v := range w.acked {
		c := out[v.Home]
		if c.BySite == nil {
			c.BySite = map[string]int{}
		}
		c.Acked++
		c.BySite[v.Site]++
		out[v.Home] = c
	}
	return out
}

// siteName names the site with id (its number, if the deployment has none).
func (w *drillLoad) siteName(id uint32) string {
	for _, st := range w.sites {
		if st.ID == id {
			return st.Name
		}
	}
	return fmt.Sprintf("site %d", id)
}
