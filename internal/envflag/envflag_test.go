package envflag

import (
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestBindAndApply(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	dir := fs.String("data-dir", "d", "where")
	port := fs.Int("port", 1, "port")
	list := fs.IntSlice("replicas", []int{1, 3}, "list")
	free := fs.String("free", "x", "not bound")
	Bind(fs, "T_", "data-dir", "port", "replicas")
	if u := fs.Lookup("data-dir").Usage; !strings.Contains(u, "[T_DATA_DIR]") {
		t.Fatalf("usage %q", u)
	}
	t.Setenv("T_DATA_DIR", "/env")
	t.Setenv("T_PORT", "9")
	t.Setenv("T_REPLICAS", "2,5")
	t.Setenv("T_FREE", "y")
	if err := fs.Parse([]string{"--port", "7"}); err != nil {
		t.Fatal(err)
	}
	if err := Apply(fs); err != nil {
		t.Fatal(err)
	}
	if *dir != "/env" || *port != 7 || !slices.Equal(*list, []int{2, 5}) || *free != "x" {
		t.Fatalf("dir %q port %d replicas %v free %q", *dir, *port, *list, *free)
	}
	t.Setenv("T_PORT", "nope")
	fs2 := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs2.Int("port", 1, "port")
	Bind(fs2, "T_")
	if err := Apply(fs2); err == nil || !strings.Contains(err.Error(), "T_PORT") {
		t.Fatalf("bad value: %v", err)
	}
}
