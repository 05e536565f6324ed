package node

import (
	"context"
	"strings"

	"github.com/aviarydb/aviary/internal/tlsx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Authorization. With TLS, every call's client presents a certificate of
// the CA, whose subject carries an identity and a role (tlsx). A method is
// allowed to the roles methodRoles lists for it (Role.AllowsAny: a node may
// do anything, an admin what a writer may, a writer what a reader may;
// a relay only what relays need). A method not listed is refused: deny by
// default. Nodes and relays must belong to this node's site. Without TLS
// (development on loopback) every call is allowed.

var (
	read     = []tlsx.Role{tlsx.RoleRead}
	write    = []tlsx.Role{tlsx.RoleWrite}
	admin    = []tlsx.Role{tlsx.RoleAdmin}
	nodeOnly = []tlsx.Role{tlsx.RoleNode}
	// readOrRelay: what a relay shares with readers (the site map, the
	// replication status, health): every role.
	readOrRelay = []tlsx.Role{tlsx.RoleRead, tlsx.RoleRelay}
)

// methodRoles lists, per full gRPC method name, the roles allowed to call
// it. A service listed with "/*" covers its methods not listed one by one.
var methodRoles = map[string][]tlsx.Role{
	"/aviary.v1.Data/Get":         read,
	"/aviary.v1.Data/MultiGet":    read,
	"/aviary.v1.Data/Range":       read,
	"/aviary.v1.Data/Count":       read,
	"/aviary.v1.Data/Put":         write,
	"/aviary.v1.Data/Delete":      write,
	"/aviary.v1.Data/Append":      write,
	"/aviary.v1.Data/Remove":      write,
	"/aviary.v1.Data/Write":       write,
	"/aviary.v1.Data/WriteStream": write,

	"/aviary.v1.Timelines/Read":   read,
	"/aviary.v1.Timelines/Length": read,
	"/aviary.v1.Timelines/Post":   write,
	"/aviary.v1.Timelines/Follow": write,
	"/aviary.v1.Timelines/Push":   write,
	"/aviary.v1.Timelines/Remove": write,
	// Replica* are the timeline nodes' calls to each other.
	"/aviary.v1.Timelines/*": nodeOnly,

	"/aviary.v1.Nameserver/GetMap":  readOrRelay,
	"/aviary.v1.Nameserver/Watch":   readOrRelay,
	"/aviary.v1.Nameserver/Status":  readOrRelay,
	"/aviary.v1.Nameserver/Propose": admin,
	"/aviary.v1.Nameserver/Join":    nodeOnly,

	// Apply is a router's delivery to a replica, and ops repair's.
	"/aviary.v1.Replica/Apply":             admin,
	"/aviary.v1.Replica/ApplyRemote":       {tlsx.RoleRelay},
	"/aviary.v1.Replica/ReplicationStatus": readOrRelay,

	"/aviary.v1.ShardAdmin/*": admin,

	"/grpc.health.v1.Health/*":                                       readOrRelay,
	"/grpc.reflection.v1.ServerReflection/*":                         readOrRelay,
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": readOrRelay,
}

// rolesFor returns the roles allowed to call method, and whether it is
// listed.
func rolesFor(method string) ([]tlsx.Role, bool) {
	if r, ok := methodRoles[method]; ok {
		return r, true
	}
	if i := strings.LastIndexByte(method, '/'); i > 0 {
		r, ok := methodRoles[method[:i]+"/*"]
		return r, ok
	}
	return nil, false
}

// authorize returns the identity of the caller of method (known false
// without TLS) if it may call it, else a PermissionDenied or
// Unauthenticated status, which it logs.
func (n *Node) authorize(ctx context.Context, method string) (id tlsx.Identity, known bool, err error) {
	if !n.sec.Enabled() {
		return tlsx.Identity{}, false, nil
	}
	id, ok := n.caller(ctx)
	if !ok {
		n.log.Warn("refused a call without a client certificate or a valid token", "method", method)
		if n.sec.Tokens != nil {
			return id, false, status.Error(codes.Unauthenticated, "a client certificate of this site's CA, or a valid bearer token, is needed")
		}
		return id, false, status.Error(codes.Unauthenticated, "a client certificate of this site's CA is needed")
	}
	roles, listed := rolesFor(method)
	switch {
	case !listed:
		n.log.Warn("refused a call to a method no role may call", "method", method, "identity", id.String())
		return id, true, status.Errorf(codes.PermissionDenied, "%s may not call %s: no role may", id, method)
	case !id.Role.AllowsAny(roles...):
		n.log.Warn("refused a call", "method", method, "identity", id.String(), "needs", roles)
		return id, true, status.Errorf(codes.PermissionDenied, "%s may not call %s: it needs the role %s", id, method, rolesString(roles))
	case (id.Role == tlsx.RoleNode || id.Role == tlsx.RoleRelay) && id.Site != n.cfg.SiteName:
		n.log.Warn("refused a call from another site's process", "method", method, "identity", id.String())
		return id, true, status.Errorf(codes.PermissionDenied, "%s belongs to site %q, not %q", id, id.Site, n.cfg.SiteName)
	}
	if id.Role.AllowsAny(tlsx.RoleAdmin) && isAdminMethod(method, roles) {
		n.log.Info("audit", "identity", id.String(), "method", method)
	}
	return id, true, nil
}

// caller is the identity of a call's client: its certificate's, else its
// bearer token's.
func (n *Node) caller(ctx context.Context) (tlsx.Identity, bool) {
	if id, ok := tlsx.PeerIdentity(ctx); ok {
		return id, true
	}
	return n.sec.Tokens.FromContext(ctx)
}

// isAdminMethod reports whether method, which roles may call, changes what
// an operator changes (the audit log records who called it).
func isAdminMethod(method string, roles []tlsx.Role) bool {
	return len(roles) == 1 && roles[0] == tlsx.RoleAdmin && !strings.HasSuffix(method, "/Apply")
}

func rolesString(roles []tlsx.Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, " or ")
}

// authorizeUnary authorizes a unary call, then holds its client to its
// rate, with the identity worked out once.
func (n *Node) authorizeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id, known, err := n.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	if err := n.rateLimit(ctx, id, known); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (n *Node) authorizeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if _, _, err := n.authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// stampWho records in who the identity of the caller of ctx, when it is an
// operator's certificate (a node forwarding a change stamped it already):
// the audit log names who made a change, not who they said they were.
func stampWho(ctx context.Context, who string) string {
	id, ok := tlsx.PeerIdentity(ctx)
	if !ok || id.Role == tlsx.RoleNode {
		return who
	}
	if who == "" || who == id.Name {
		return id.String()
	}
	return id.String() + " as " + who
}
