package ops

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/aviarydb/aviary/gizzard"
)

// Verdicts of a drill.
const (
	verdictPass           = "pass"
	verdictPassConditions = "pass with conditions"
	verdictFail           = "fail"
	verdictInProgress     = "in progress"
)

const (
	reportJSON = "report.json"
	reportHTML = "report.html"
)

// drillReport is what a drill writes: DIR/drills/ID/report.json, rendered
// as report.html.
type drillReport struct {
	ID         string    `json:"id"`
	Kind       string    `json:"kind"` // planned or unplanned
	From       string    `json:"from"`
	To         string    `json:"to"`
	Deployment string    `json:"deployment"`
	Started    time.Time `json:"started"`
	FailoverAt time.Time `json:"failover_at"`
	// Stage: failover, failed over, failback, failed back.
	Stage          string       `json:"stage"`
	Plan           []string     `json:"plan"`
	Checks         []drillCheck `json:"checks"`
	FailbackChecks []drillCheck `json:"failback_checks,omitempty"`
	Events         []drillEvent `json:"events"`
	RTO            drillFigure  `json:"rto"`
	RPO            rpoFigure    `json:"rpo"`
	// FailbackSeconds: from A made active again until a write of A's
	// clients is acknowledged at A.
	FailbackSeconds float64               `json:"failback_seconds,omitempty"`
	Writes          map[string]siteWrites `json:"writes,omitempty"`
	Switches        []clientSwitch        `json:"switches,omitempty"`
	Lag             []lagSample           `json:"lag,omitempty"`
	DigestsBefore   map[string]siteDigest `json:"digests_before,omitempty"`
	DigestsAfter    map[string]siteDigest `json:"digests_after,omitempty"`
	Verify          string                `json:"verify,omitempty"`
	VerifyOK        bool                  `json:"verify_ok,omitempty"`
	// MissingAfter: per site, acknowledged verifying writes it lacks after
	// failback.
	MissingAfter map[string]int `json:"missing_after,omitempty"`
	Verdict      string         `json:"verdict"`
	Reasons      []string       `json:"reasons,omitempty"`
}

type drillCheck struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

type drillEvent struct {
	At     time.Time `json:"at"`
	Offset float64   `json:"offset_s"` // seconds since the drill started
	What   string    `json:"what"`
}

// drillFigure is a measured time against its target, in seconds.
type drillFigure struct {
	Target float64 `json:"target_s"`
	Actual float64 `json:"actual_s"`
	Met    bool    `json:"met"`
}

// rpoFigure counts the writes acknowledged at the failed site that the
// target lacked at the cut.
type rpoFigure struct {
	Target    int    `json:"target_records"`
	Records   int    `json:"records"`
	Met       bool   `json:"met"`
	LostFile  string `json:"lost_file,omitempty"`
	Recovered int    `json:"recovered_after_failback"`
}

type lagSample struct {
	Offset  float64 `json:"offset_s"`
	Path    string  `json:"path"`
	Seconds float64 `json:"lag_s"`
}

// siteDigest is a site's digest over every table.
type siteDigest struct {
	Sum     string `json:"sum"`
	Records uint64 `json:"records"`
}

// verdict judges a drill that failed back.
func (d *drill) verdict() (string, []string) {
	r := d.rep
	var fails, conds []string
	for _, name := range slices.Sorted(maps.Keys(r.MissingAfter)) {
		if n := r.MissingAfter[name]; n > 0 {
			fails = append(fails, fmt.Sprintf("%s lacks %d acknowledged verifying writes after failback", name, n))
		}
	}
	if !r.VerifyOK {
		fails = append(fails, "verify found "+r.From+" and "+r.To+" different: "+r.Verify)
	}
	if s := digestsDiffer(r.DigestsAfter); s != "" {
		fails = append(fails, "digests after failback differ: "+s)
	}
	if !r.RPO.Met {
		if r.Kind == "planned" || r.RPO.Recovered < r.RPO.Records {
			fails = append(fails, fmt.Sprintf("RPO %d records (target %d); %d recovered after failback", r.RPO.Records, r.RPO.Target, r.RPO.Recovered))
		} else {
			conds = append(conds, fmt.Sprintf("RPO %d records at the cut (target %d), every one recovered when %s returned", r.RPO.Records, r.RPO.Target, r.From))
		}
	}
	if !r.RTO.Met {
		conds = append(conds, fmt.Sprintf("RTO %.3fs above its target %.0fs", r.RTO.Actual, r.RTO.Target))
	}
	switch {
	case len(fails) > 0:
		return verdictFail, append(fails, conds...)
	case len(conds) > 0:
		return verdictPassConditions, conds
	}
	return verdictPass, []string{fmt.Sprintf("RTO %.3fs (target %.0fs), RPO %d records, every acknowledged write at every site, digests equal", r.RTO.Actual, r.RTO.Target, r.RPO.Records)}
}

// digestsDiffer describes how the sites' digests differ ("" if equal).
func digestsDiffer(ds map[string]siteDigest) string {
	names := slices.Sorted(maps.Keys(ds))
	for _, n := range names[min(1, len(names)):] {
		if ds[n].Sum != ds[names[0]].Sum {
			return fmt.Sprintf("%s %s (%d records) vs %s %s (%d records)", names[0], ds[names[0]].Sum, ds[names[0]].Records, n, ds[n].Sum, ds[n].Records)
		}
	}
	return ""
}

// drillChecks checks the deployment before a failover (or failback): every
// process answers (but the failed site's, on failback), the path from A to
// B lags under --max-lag, B is active and has room.
func (s *session) drillChecks(ctx context.Context, d *drill, failback bool) []drillCheck {
	var out []drillCheck
	add := func(name string, ok bool, format string, args ...any) {
		out = append(out, drillCheck{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	for _, st := range d.dep.Sites {
		if dead := deadProcs(st); failback && st.Name == d.from.Name && len(dead) > 0 {
			_, err := os.Stat(d.dep.Binary)
			add(st.Name+" restartable", err == nil && len(st.Nodes[0].Args) > 0, "%s down; they start again from %s", strings.Join(dead, ", "), d.dep.Binary)
			continue
		}
		var bad []string
		for _, n := range st.Nodes {
			p := s.probeNode(ctx, n.ID, n.GRPCAddr)
			if !p.Reachable || !p.Ready {
				bad = append(bad, fmt.Sprintf("%s: %s", n.ID, dash(p.Error)))
			}
		}
		if h := relayHealth(ctx, st.Relay.HTTPAddr); h != "ok" {
			bad = append(bad, "relay: "+h)
		}
		if len(bad) > 0 {
			add(st.Name+" healthy", false, "%s", strings.Join(bad, "; "))
		} else {
			add(st.Name+" healthy", true, "%s and its relay answer", countOf(len(st.Nodes), "node"))
		}
	}
	if failback {
		return out
	}
	a, b := d.from, d.to
	for _, st := range []devSubsite{a, b} {
		m, err := s.getMap(ctx, st.Nodes[0].GRPCAddr)
		if err != nil {
			add(st.Name+" active", false, "%v", err)
			continue
		}
		self := m.Sites[st.Name]
		add(st.Name+" active", self.Writable(), "its map says %s", self.State)
	}
	// Lag of the path A → B, as B's nodes know it.
	worst, heard, stalled := time.Duration(0), false, false
	for _, n := range b.Nodes {
		rs, err := s.nodeReplication(ctx, n.GRPCAddr)
		if err != nil {
			continue
		}
		for _, o := range rs.Origins {
			if o.OriginSiteName != a.Name {
				continue
			}
			lag, st := pathLag(o, time.Now())
			heard, stalled, worst = true, stalled || st, max(worst, lag)
		}
	}
	switch {
	case !heard:
		add("lag "+a.Name+" → "+b.Name, false, "%s has not heard from %s", b.Name, a.Name)
	default:
		add("lag "+a.Name+" → "+b.Name, !stalled && worst <= d.f.maxLag, "%s (bound %s)%s", worst.Round(time.Millisecond), d.f.maxLag, map[bool]string{true: ", STALLED", false: ""}[stalled])
	}
	// Room at B: free disk for twice A's data.
	var used uint64
	for _, n := range a.Nodes {
		used += dirSize(n.DataDir)
	}
	free, err := freeBytes(b.Nodes[0].DataDir)
	if err != nil {
		add(b.Name+" has room", false, "%v", err)
	} else {
		add(b.Name+" has room", free >= 2*used, "%s free for %s of %s's data", humanBytes(free), humanBytes(used), a.Name)
	}
	return out
}

// dirSize sums the sizes of the files under dir (0 if unreadable).
func dirSize(dir string) uint64 {
	var n uint64
	_ = filepath.WalkDir(dir, func(_ string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if fi, err := e.Info(); err == nil {
				n += uint64(fi.Size())
			}
		}
		return nil
	})
	return n
}

// drillDigests returns every site's digest of its data.
func (s *session) drillDigests(ctx context.Context, sites []devSubsite) (map[string]siteDigest, error) {
	ae, err := s.antiEntropy(ctx, endpoints(sites...), aeOptions{DigestsOnly: true})
	if err != nil {
		return nil, fmt.Errorf("digests: %w", err)
	}
	out := map[string]siteDigest{}
	for name, sd := range ae.digests() {
		out[name] = siteDigest{Sum: sd.Digest, Records: sd.Records}
	}
	return out, nil
}

// writeReport writes report.json and report.html and records the drill in
// the audit log of every site that answers.
func (d *drill) writeReport(ctx context.Context) error {
	if err := d.save(); err != nil {
		return err
	}
	var h bytes.Buffer
	if err := reportTemplate.Execute(&h, d.view()); err != nil {
		return fmt.Errorf("ops: report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, reportHTML), h.Bytes(), 0o644); err != nil {
		return fmt.Errorf("ops: %w", err)
	}
	note := d.auditNote()
	// Recorded even when the drill was interrupted (Ctrl-C).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, st := range d.dep.Sites {
		if !processAlive(st.Nodes[0].PID) {
			continue
		}
		if _, err := d.s.proposeAt(ctx, st.Nodes[0].GRPCAddr, []gizzard.Step{{Op: gizzard.OpNote, Note: note}}); err != nil {
			fmt.Fprintf(d.s.errOut, "note: the drill is not in %s's audit log: %v\n", st.Name, err)
		}
	}
	return nil
}

// auditNote is the drill's line in the audit log.
func (d *drill) auditNote() string {
	r := d.rep
	note := fmt.Sprintf("drill %s: %s failover of %s to %s, stage %s: verdict %s; RTO %.3fs (target %.0fs), RPO %d records (target %d)",
		r.ID, r.Kind, r.From, r.To, r.Stage, r.Verdict, r.RTO.Actual, r.RTO.Target, r.RPO.Records, r.RPO.Target)
	if r.RPO.Records > 0 {
		note += fmt.Sprintf(", %d recovered", r.RPO.Recovered)
	}
	note += "; report " + filepath.Join(d.dir, reportHTML)
	if len(note) > gizzard.MaxNote {
		note = note[:gizzard.MaxNote]
	}
	return note
}

// printSummary prints the figures and where the report is.
func (d *drill) printSummary() error {
	r := d.rep
	if d.s.o.json {
		return d.s.printJSON(r)
	}
	out := d.s.out
	fmt.Fprintf(out, "\ndrill %s (%s, %s → %s): %s\n", r.ID, r.Kind, r.From, r.To, r.Stage)
	fmt.Fprintf(out, "  RTO       %.3fs (target %.0fs): %s\n", r.RTO.Actual, r.RTO.Target, metStr(r.RTO.Met))
	fmt.Fprintf(out, "  RPO       %d records missing at the cut (target %d): %s", r.RPO.Records, r.RPO.Target, metStr(r.RPO.Met))
	if r.RPO.LostFile != "" {
		fmt.Fprintf(out, "; listed in %s", r.RPO.LostFile)
	}
	fmt.Fprintln(out)
	if r.Stage == stageFailedBack {
		fmt.Fprintf(out, "  recovered %d of them after failback\n", r.RPO.Recovered)
		fmt.Fprintf(out, "  failback  %.3fs until %s's clients wrote at %s again\n", r.FailbackSeconds, r.From, r.From)
		fmt.Fprintf(out, "  verify    %s\n", r.Verify)
	}
	for _, name := range slices.Sorted(maps.Keys(r.Writes)) {
		c := r.Writes[name]
		fmt.Fprintf(out, "  writes of %s's client: %d acknowledged %v, %d not\n", name, c.Acked, c.BySite, c.Failed)
	}
	fmt.Fprintf(out, "  verdict   %s\n", r.Verdict)
	for _, why := range r.Reasons {
		fmt.Fprintf(out, "            %s\n", why)
	}
	fmt.Fprintf(out, "  report    %s\n", filepath.Join(d.dir, reportHTML))
	if r.Verdict == verdictFail {
		return fmt.Errorf("ops: drill %s failed: %s", r.ID, strings.Join(r.Reasons, "; "))
	}
	return nil
}

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// reportView is what the HTML template renders.
type reportView struct {
	R            *drillReport
	Chart        template.HTML
	DigestsEqual bool
}

func (d *drill) view() reportView {
	d.mu.Lock()
	defer d.mu.Unlock()
	v := reportView{R: d.rep, Chart: lagChart(d.rep.Lag)}
	v.DigestsEqual = len(d.rep.DigestsAfter) > 0 && digestsDiffer(d.rep.DigestsAfter) == ""
	return v
}

// lagChart draws the lag samples as an SVG line per path.
func lagChart(samples []lagSample) template.HTML {
	if len(samples) == 0 {
		return template.HTML("<p>no lag samples</p>")
	}
	const w, h, pad = 720.0, 240.0, 40.0
	maxT, maxL := 0.0, 1.0
	paths := map[string][]lagSample{}
	for _, s := range samples {
		maxT, maxL = math.Max(maxT, s.Offset), math.Max(maxL, s.Seconds)
		paths[s.Path] = append(paths[s.Path], s)
	}
	maxT = math.Max(maxT, 1)
	colors := []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-size="11" font-family="sans-serif">`, w, h+20*float64(len(paths)/3+1))
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#333"/><line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#333"/>`, pad, h-pad, w-10, h-pad, pad, 10.0, pad, h-pad)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">%.1fs</text><text x="4" y="16">%.1fs lag</text><text x="4" y="%.0f">0</text>`, w-60, h-pad+14, maxT, maxL, h-pad)
	for i, p := range slices.Sorted(maps.Keys(paths)) {
		c := colors[i%len(colors)]
		var pts []string
		for _, s := range paths[p] {
			x := pad + (w-pad-10)*s.Offset/maxT
			y := (h - pad) - (h-pad-10)*s.Seconds/maxL
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, c, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="%s">%s</text>`, pad+float64(i%3)*220, h-8+20*float64(i/3), c, template.HTMLEscapeString(p))
	}
	b.WriteString("</svg>")
	return template.HTML(b.String()) // #nosec: built from numbers and escaped names
}

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"met": metStr,
	"ts":  func(t time.Time) string { return t.Format("2006-01-02 15:04:05.000 MST") },
	"f3":  func(f float64) string { return fmt.Sprintf("%.3f", f) },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Aviary DR drill {{.R.ID}}: {{.R.Verdict}}</title>
<style>
body{font-family:sans-serif;margin:2em;max-width:960px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
.pass{color:#1a7f37}.fail{color:#cf222e}.cond{color:#9a6700}code{font-size:12px}
</style></head><body>
<h1>DR drill {{.R.ID}}</h1>
<p>{{.R.Kind}} failover of <b>{{.R.From}}</b> to <b>{{.R.To}}</b>, started {{ts .R.Started}}; deployment <code>{{.R.Deployment}}</code>; stage: {{.R.Stage}}.</p>
<h2>Verdict: <span class="{{if eq .R.Verdict "pass"}}pass{{else if eq .R.Verdict "fail"}}fail{{else}}cond{{end}}">{{.R.Verdict}}</span></h2>
<ul>{{range .R.Reasons}}<li>{{.}}</li>{{end}}</ul>
<h2>RTO and RPO</h2>
<table><tr><th></th><th>target</th><th>actual</th><th></th></tr>
<tr><td>RTO (start of failover until a write of {{.R.From}}'s clients is acknowledged at {{.R.To}})</td><td>{{f3 .R.RTO.Target}} s</td><td>{{f3 .R.RTO.Actual}} s</td><td>{{met .R.RTO.Met}}</td></tr>
<tr><td>RPO (writes acknowledged at {{.R.From}} missing at {{.R.To}} at the cut)</td><td>{{.R.RPO.Target}} records</td><td>{{.R.RPO.Records}} records{{if .R.RPO.LostFile}} (<code>{{.R.RPO.LostFile}}</code>){{end}}</td><td>{{met .R.RPO.Met}}</td></tr>
{{if eq .R.Stage "failed back"}}<tr><td>missing writes recovered after failback</td><td>{{.R.RPO.Records}}</td><td>{{.R.RPO.Recovered}}</td><td></td></tr>
<tr><td>failback: {{.R.From}} active until its clients write there</td><td></td><td>{{f3 .R.FailbackSeconds}} s</td><td></td></tr>{{end}}
</table>
<h2>Timeline</h2>
<table><tr><th>t (s)</th><th>time</th><th>event</th></tr>
{{range .R.Events}}<tr><td>{{f3 .Offset}}</td><td>{{ts .At}}</td><td>{{.What}}</td></tr>{{end}}
</table>
<h2>Replication lag over time</h2>
{{.Chart}}
<h2>Verifying workload</h2>
<table><tr><th>client of</th><th>acknowledged</th><th>by site</th><th>not acknowledged</th></tr>
{{range $name, $w := .R.Writes}}<tr><td>{{$name}}</td><td>{{$w.Acked}}</td><td>{{range $s, $n := $w.BySite}}{{$s}}: {{$n}} {{end}}</td><td>{{$w.Failed}}</td></tr>{{end}}
</table>
{{if .R.Switches}}<table><tr><th>time</th><th>client of</th><th>from</th><th>to</th><th>why</th></tr>
{{range .R.Switches}}<tr><td>{{ts .At}}</td><td>{{.Home}}</td><td>{{.From}}</td><td>{{.To}}</td><td>{{.Reason}}</td></tr>{{end}}</table>{{end}}
{{if .R.MissingAfter}}<p>Acknowledged verifying writes missing after failback: {{range $s, $n := .R.MissingAfter}}{{$s}}: {{$n}} {{end}}</p>{{end}}
<h2>Digests</h2>
<table><tr><th>site</th><th>before</th><th>records</th><th>after</th><th>records</th></tr>
{{$after := .R.DigestsAfter}}{{range $name, $b := .R.DigestsBefore}}<tr><td>{{$name}}</td><td><code>{{$b.Sum}}</code></td><td>{{$b.Records}}</td>{{with index $after $name}}{{if .Sum}}<td><code>{{.Sum}}</code></td><td>{{.Records}}</td>{{else}}<td>-</td><td>-</td>{{end}}{{end}}</tr>{{end}}
</table>
{{if .R.DigestsAfter}}<p>After failback the sites' digests are {{if .DigestsEqual}}<span class="pass">equal</span>{{else}}<span class="fail">different</span>{{end}}.</p>{{end}}
{{if .R.Verify}}<p>Verify {{.R.From}} against {{.R.To}}: {{.R.Verify}}</p>{{end}}
<h2>Plan and checks</h2>
<ol>{{range .R.Plan}}<li>{{.}}</li>{{end}}</ol>
<table><tr><th>check</th><th></th><th>detail</th></tr>
{{range .R.Checks}}<tr><td>{{.Name}}</td><td>{{if .OK}}ok{{else}}FAIL{{end}}</td><td>{{.Detail}}</td></tr>{{end}}
{{range .R.FailbackChecks}}<tr><td>failback: {{.Name}}</td><td>{{if .OK}}ok{{else}}FAIL{{end}}</td><td>{{.Detail}}</td></tr>{{end}}
</table>
</body></html>
`))
