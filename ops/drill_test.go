package ops

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/api/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// readReport reads the report of the newest drill in dir.
func readReport(t *testing.T, dir string) (*drillReport, string) {
	t.Helper()
	id, err := os.ReadFile(filepath.Join(dir, drillsDir, currentDrill))
	if err != nil {
		t.Fatal(err)
	}
	ddir := filepath.Join(dir, drillsDir, strings.TrimSpace(string(id)))
	b, err := os.ReadFile(filepath.Join(ddir, reportJSON))
	if err != nil {
		t.Fatal(err)
	}
	r := &drillReport{}
	if err := json.Unmarshal(b, r); err != nil {
		t.Fatal(err)
	}
	return r, ddir
}

// checkFailedBack checks a drill's final report: not failed, every
// acknowledged verifying write at every site, equal digests, an HTML page
// and an audit entry.
func checkFailedBack(t *testing.T, dir, addr string) *drillReport {
	t.Helper()
	r, ddir := readReport(t, dir)
	if r.Stage != "failed back" || r.Verdict == verdictFail || r.Verdict == verdictInProgress {
		t.Fatalf("drill %s: stage %q, verdict %q: %v", r.ID, r.Stage, r.Verdict, r.Reasons)
	}
	for site, n := range r.MissingAfter {
		if n != 0 {
			t.Errorf("%s lacks %d acknowledged verifying writes after failback", site, n)
		}
	}
	if len(r.MissingAfter) != 3 || len(r.DigestsAfter) != 3 || digestsDiffer(r.DigestsAfter) != "" || !r.VerifyOK {
		t.Errorf("after failback: missing %v, digests %v, verify %q", r.MissingAfter, r.DigestsAfter, r.Verify)
	}
	if r.RPO.Recovered != r.RPO.Records {
		t.Errorf("%d writes missing at the cut, %d recovered", r.RPO.Records, r.RPO.Recovered)
	}
	if w := r.Writes[r.From]; w.BySite[r.From] == 0 || w.BySite[r.To] == 0 {
		t.Errorf("%s's client wrote %v: not at both sites", r.From, w.BySite)
	}
	html, err := os.ReadFile(filepath.Join(ddir, reportHTML))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "Verdict: ", r.ID, "RTO", "Timeline"} {
		if !strings.Contains(string(html), want) {
			t.Errorf("report.html lacks %q", want)
		}
	}
	if out := mustOps(t, append(devTLSArgs(dir), "--addr", addr, "audit")...); !strings.Contains(out, "drill "+r.ID) || !strings.Contains(out, "stage failed back") {
		t.Errorf("the audit log of %s does not record drill %s:\n%s", addr, r.ID, out)
	}
	t.Logf("drill %s (%s): RTO %.3fs, RPO %d records (%d recovered), failback %.3fs, verdict %s %v",
		r.ID, r.Kind, r.RTO.Actual, r.RPO.Records, r.RPO.Recovered, r.FailbackSeconds, r.Verdict, r.Reasons)
	return r
}

// TestDrills runs, on a local deployment of three one-node sites, a
// planned drill (site-a to site-b and back) and then an unplanned one
// (site-a killed): the planned one loses nothing (RPO 0); the unplanned
// one's count of writes missing at the cut equals what an independent
// check of site-b finds; after each failback every acknowledged verifying
// write is at every site and the digests are equal.
func TestDrills(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/node and cmd/relay and runs three sites of processes")
	}
	dir := filepath.Join(t.TempDir(), "sites")
	t.Cleanup(func() {
		if site, err := readSite(dir); err == nil {
			for _, p := range site.procs() {
				if processAlive(p.PID) {
					_ = kill(p.PID)
				}
			}
		}
	})
	base := freeSitesBasePort(t, 3)
	args := []string{"dev", "up", "--sites", "3", "--shards", "4", "--dir", dir, "--base-port", strconv.Itoa(base), "--timeout", "10s"}
	if raceEnabled {
		args = append(args, "--race")
	}
	mustOps(t, args...)
	site, err := readSite(dir)
	if err != nil {
		t.Fatal(err)
	}
	addrA, addrB := site.Sites[0].Nodes[0].GRPCAddr, site.Sites[1].Nodes[0].GRPCAddr
	drill := func(args ...string) string {
		return mustOps(t, append([]string{"drill"}, append(args, "--dir", dir, "--after", "500ms")...)...)
	}

	// A dry run checks and changes nothing.
	out := drill("failover", "--from", "site-a", "--to", "site-b", "--dry-run")
	for _, want := range []string{"plan:", "site-a healthy", "lag site-a → site-b", "site-b has room", "dry run: every check passed"} {
		if !strings.Contains(out, want) {
			t.Fatalf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, drillsDir)); err == nil {
		t.Fatal("a dry run wrote a drill")
	}

	// Planned.
	t.Log(drill("failover", "--from", "site-a", "--to", "site-b", "--warmup", "1s", "--rate", "40"))
	r, _ := readReport(t, dir)
	if r.Stage != "failed over" || r.RPO.Records != 0 || !r.RPO.Met || r.RTO.Actual <= 0 {
		t.Fatalf("planned failover: stage %q, RPO %+v, RTO %+v", r.Stage, r.RPO, r.RTO)
	}
	admin := devAdmin(t, dir)
	cc := dialAs(t, admin, addrA)
	_, err = pb.NewDataClient(cc).Put(t.Context(), &pb.PutRequest{Table: "statuses", Key: []byte("x"), Value: []byte("y")})
	if ref, ok := client.ParseSiteRefusal(err); status.Code(err) != codes.FailedPrecondition || !ok || ref.Use != "site-b" || ref.State != "fenced" {
		t.Fatalf("a write at fenced site-a: %v (%+v)", err, ref)
	}
	t.Log(drill("failback", "--to", "site-a"))
	if r := checkFailedBack(t, dir, addrB); r.RPO.Records != 0 {
		t.Fatalf("planned drill: RPO %d records", r.RPO.Records)
	}

	// Unplanned, at a rate that leaves writes in flight at the kill.
	t.Log(drill("failover", "--from", "site-a", "--to", "site-b", "--warmup", "1s", "--unplanned", "--rate", "300"))
	r, ddir := readReport(t, dir)
	if r.Stage != "failed over" || r.Kind != "unplanned" {
		t.Fatalf("unplanned failover: stage %q kind %q", r.Stage, r.Kind)
	}
	// The independent check: of the writes site-a acknowledged, site-b
	// lacks exactly those the report lists.
	acked, err := readAcked(filepath.Join(ddir, "acked.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var atA []vwrite
	for _, v := range acked {
		if v.Site == "site-a" {
			atA = append(atA, v)
		}
	}
	siteB, err := client.Dial(siteAddrs(site.Sites[1]), client.WithTLS(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer siteB.Close()
	missing, err := missingAt(t.Context(), siteB, atA)
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != r.RPO.Records {
		t.Fatalf("the report counts %d writes missing at site-b at the cut; site-b lacks %d of the %d acknowledged at site-a", r.RPO.Records, len(missing), len(atA))
	}
	if r.RPO.Records > 0 {
		lost, err := readAcked(r.RPO.LostFile)
		if err != nil || len(lost) != len(missing) {
			t.Fatalf("lost-writes file: %d writes, %v; want %d", len(lost), err, len(missing))
		}
		for i := range lost {
			if lost[i].Key != missing[i].Key {
				t.Fatalf("lost-writes file lists %s, site-b lacks %s", lost[i].Key, missing[i].Key)
			}
		}
	}
	t.Logf("unplanned: site-a acknowledged %d verifying writes; %d missing at site-b at the cut", len(atA), len(missing))
	t.Log(drill("failback", "--to", "site-a"))
	checkFailedBack(t, dir, addrB)
}
