package ops

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aviarydb/aviary/gizzard"
)

// printJSON prints v as indented JSON.
func (s *session) printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("ops: encode output: %w", err)
	}
	b = append(b, '\n')
	_, err = s.out.Write(b)
	return err
}

// table collects rows and prints them aligned under a header.
type table struct {
	rows [][]string
}

func newTable(header ...string) *table { return &table{rows: [][]string{header}} }

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

// print writes the table to s's output, columns two spaces apart.
func (s *session) printTable(t *table) error {
	tw := tabwriter.NewWriter(s.out, 0, 0, 2, ' ', 0)
	for _, r := range t.rows {
		// Cells never hold tabs or newlines: they would break the columns.
		for i, c := range r {
			r[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(c)
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// emit prints v as JSON with --json, else the table.
func (s *session) emit(v any, t *table) error {
	if s.o.json {
		return s.printJSON(v)
	}
	return s.printTable(t)
}

// hex64 formats a hash or base as 0x and 16 hex digits.
func hex64(v uint64) string { return fmt.Sprintf("0x%016x", v) }

// parseBase parses a forwarding base or hash: decimal, or 0x and hex.
func parseBase(s string) (uint64, error) {
	var v uint64
	var err error
	if h, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		v, err = strconv.ParseUint(h, 16, 64)
	} else {
		v, err = strconv.ParseUint(s, 10, 64)
	}
	if err != nil {
		return 0, fmt.Errorf("base %q: want a decimal number or 0x and up to 16 hex digits, below 2^64", s)
	}
	return v, nil
}

// humanBytes formats a size with a binary unit.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// dash shows an empty cell as "-".
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// relTime says when t is relative to now: "in 3s", "2m ago", "now".
func relTime(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	switch {
	case d == 0:
		return "now"
	case d > 0:
		return "in " + d.String()
	}
	return (-d).String() + " ago"
}

// sortedNodeIDs returns the ids of m's nodes in order.
func sortedNodeIDs(m *gizzard.Map) []string {
	return slices.Sorted(maps.Keys(m.Nodes))
}

// childrenString lists a shard's links as child:weight, space separated.
func childrenString(ls []gizzard.Link) string {
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = fmt.Sprintf("%s:%d", l.Child, l.Weight)
	}
	return strings.Join(parts, " ")
}

// leavesString lists leaves as "shard on node", comma separated.
func leavesString(ls []gizzard.Leaf) string {
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = l.Shard + " on " + l.Node
	}
	return strings.Join(parts, ", ")
}
