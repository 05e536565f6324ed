package ops

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"time"

	"github.com/aviarydb/aviary/internal/envflag"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// DefaultAddr is the node asked when --addr is not given: a node started
// with no flags.
const DefaultAddr = "127.0.0.1:7390"

// DefaultTimeout bounds each RPC when --timeout is not given.
const DefaultTimeout = 10 * time.Second

// envPrefix starts the environment variable of every flag that has one:
// --addr is AVIARY_OPS_ADDR.
const envPrefix = "AVIARY_OPS_"

// options are the global flags, shared by every command.
type options struct {
	addr    string
	json    bool
	who     string
	timeout time.Duration
	// tlsCA, tlsCert and tlsKey are --tls-ca, --tls-cert and --tls-key
	// (see resolveTLS).
	tlsCA, tlsCert, tlsKey string
}

// NewCommand returns the ops command tree. Execute it; it prints results to
// the command's output and a one-line error to its error output, and
// returns the error.
func NewCommand() *cobra.Command {
	o := &options{addr: DefaultAddr, who: defaultWho(), timeout: DefaultTimeout}
	root := &cobra.Command{
		Use:   "ops",
		Short: "Operate an Aviary site: its nodes, shard map, replicas and router jobs",
		Long: `ops operates an Aviary site, in the spirit of Twitter's gizzmo.

It talks gRPC to any node of the site (--addr): read commands print that
node's copy of the shard map, and changes go to the site's nameserver with
Nameserver.Propose, which the node forwards to the raft leader. Every change
is atomic and recorded in the map's audit log with --who.

Read commands print aligned tables, or JSON with --json. Errors are one line
on standard error, and the exit status is 1.

Against nodes running mutual TLS, ops presents a certificate: --tls-ca,
--tls-cert and --tls-key (an admin's, to change the map; ops certs issues
one). With none of them given, ops uses the certificates of the local dev
deployment, if there is one: ./aviary-dev/certs/ca.crt, admin.crt and
admin.key, which ops dev up creates; and a command that works on a dev
deployment in --dir (dev up, dev status, dev down, drill, verify, repair)
uses DIR/certs. Otherwise it connects in plaintext.

Global flags can also be set by environment variables named AVIARY_OPS_ and
the flag name in capitals (--addr: AVIARY_OPS_ADDR). A flag given on the
command line wins.`,
		Example: `  ops dev up                          # a local three-node site
  ops dev up --sites 3                # three one-node sites with their relays
  ops --addr 127.0.0.1:7400 tree show
  AVIARY_OPS_ADDR=10.0.0.5:7390 ops ping --wait 5s`,
		SilenceUsage:  true,
		SilenceErrors: false,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := envflag.Apply(cmd.Flags()); err != nil {
				return err
			}
			if o.timeout <= 0 {
				return fmt.Errorf("--timeout %s: must be positive", o.timeout)
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&o.addr, "addr", o.addr, "gRPC address of any node of the site")
	pf.BoolVar(&o.json, "json", false, "print JSON instead of tables")
	pf.StringVar(&o.who, "who", o.who, "operator recorded in the audit log of every change")
	pf.DurationVar(&o.timeout, "timeout", o.timeout, "bound on each request to a node")
	pf.StringVar(&o.tlsCA, "tls-ca", "", "CA bundle (PEM) the nodes' certificates must chain to: turns on mutual TLS (default with no --tls-* flag: ./aviary-dev/certs/ca.crt if it exists, or a dev command's DIR/certs)")
	pf.StringVar(&o.tlsCert, "tls-cert", "", "certificate (PEM) ops presents, signed by the CA; its role says what ops may do (admin to change the map) (default: the dev deployment's admin.crt, as --tls-ca)")
	pf.StringVar(&o.tlsKey, "tls-key", "", "private key (PEM) of --tls-cert (default: the dev deployment's admin.key, as --tls-ca)")
	withEnv(pf, "addr", "json", "who", "timeout", "tls-ca", "tls-cert", "tls-key")

	root.AddCommand(
		newNodesCommand(o),
		newPingCommand(o),
		newTablesCommand(o),
		newShardsCommand(o),
		newForwardingsCommand(o),
		newTreeCommand(o),
		newLookupCommand(o),
		newAuditCommand(o),
		newVersionCommand(o),
		newShardCommand(o),
		newLinkCommand(o),
		newForwardingCommand(o),
		newTableCommand(o),
		newReplicaCommand(o),
		newMigrateCommand(o),
		newMigrationsCommand(o),
		newSplitCommand(o),
		newRebalanceCommand(o),
		newSitesCommand(o),
		newRelayCommand(o),
		newConflictsCommand(o),
		newJobsCommand(o),
		newErrorsCommand(o),
		newVerifyCommand(o),
		newRepairCommand(o),
		newDevCommand(o),
		newDrillCommand(o),
		newCertsCommand(o),
	)
	return root
}

// runner adapts a command body to cobra: it opens a session (closed when
// the body returns) and passes the command's context.
func (o *options) runner(body func(ctx context.Context, s *session, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		s := newSession(o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		defer s.close()
		return body(cmd.Context(), s, args)
	}
}

// groupRunE runs a command that only groups subcommands: with no
// arguments it prints the help, else it reports the unknown subcommand.
func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	return fmt.Errorf("unknown command %q for %q; see %s --help", args[0], cmd.CommandPath(), cmd.CommandPath())
}

// defaultWho is "$USER@hostname".
func defaultWho() string {
	name := os.Getenv("USER")
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
	}
	if name == "" {
		name = "unknown"
	}
	return name + "@" + hostname()
}

// hostname is this machine's name, or "localhost" if it has none.
func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// withEnv lets environment variables (AVIARY_OPS_...) set the named flags.
func withEnv(fs *pflag.FlagSet, names ...string) { envflag.Bind(fs, envPrefix, names...) }
