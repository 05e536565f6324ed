// Command ops is the operator command line of an Aviary site: it shows and
// changes the shard map, inspects nodes and router jobs, and runs a local
// development site. Run "ops --help" for the commands.
package main

import (
	"os"

	"github.com/aviarydb/aviary/ops"
)

func main() {
	if err := ops.NewCommand().Execute(); err != nil {
		os.Exit(1)
	}
}
