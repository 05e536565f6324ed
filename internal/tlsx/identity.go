package tlsx

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Role is what an identity may do. A certificate names its role in the
// first organizational unit of its subject.
//
// read < write < admin < node are ordered: each allows what the ones
// before it allow. relay stands apart: it is what a site's relay needs
// (applying other sites' writes, reading the map it follows), and only a
// relay or a node is allowed it. A relay is allowed nothing else, so an
// endpoint a relay shares with ordinary readers allows both:
// r.AllowsAny(RoleRead, RoleRelay).
type Role string

// The roles.
const (
	// RoleRead reads data and the shard map.
	RoleRead Role = "read"
	// RoleWrite writes data, and reads.
	RoleWrite Role = "write"
	// RoleAdmin changes the shard map and runs operations, and writes.
	RoleAdmin Role = "admin"
	// RoleNode is a node of the site: it is allowed everything, including
	// raft and node-to-node traffic.
	RoleNode Role = "node"
	// RoleRelay is a site's relay: allowed only what relays need.
	RoleRelay Role = "relay"
)

// Roles lists every role, ordered ones first.
var Roles = []Role{RoleRead, RoleWrite, RoleAdmin, RoleNode, RoleRelay}

// Sentinel errors of identities.
var (
	// ErrNoRole: a certificate's subject names no role.
	ErrNoRole = errors.New("tlsx: no role")
	// ErrUnknownRole: a role that is not one of Roles.
	ErrUnknownRole = errors.New("tlsx: unknown role")
	// ErrBadIdentity: a name or site that is not valid, or a node or relay
	// without a site.
	ErrBadIdentity = errors.New("tlsx: invalid identity")
	// ErrUnexpectedPeer: the peer's certificate is valid, but not the
	// identity a connection expects (see Expect).
	ErrUnexpectedPeer = errors.New("tlsx: unexpected peer")
)

// Valid reports whether r is one of Roles.
func (r Role) Valid() bool { return slices.Contains(Roles, r) }

// rank orders read < write < admin < node; relay and unknown roles are 0.
func (r Role) rank() int {
	switch r {
	case RoleRead:
		return 1
	case RoleWrite:
		return 2
	case RoleAdmin:
		return 3
	case RoleNode:
		return 4
	}
	return 0
}

// Allows reports whether a caller of role r may do what needs role need.
// An ordered role allows itself and the ones below it; relay is allowed
// only to relays and nodes, and a relay is allowed nothing but relay. An
// unknown role, on either side, allows nothing.
func (r Role) Allows(need Role) bool {
	if need == RoleRelay {
		return r == RoleRelay || r == RoleNode
	}
	return r.rank() > 0 && need.rank() > 0 && r.rank() >= need.rank()
}

// AllowsAny reports whether r allows one of needs.
func (r Role) AllowsAny(needs ...Role) bool {
	return slices.ContainsFunc(needs, r.Allows)
}

// ParseRole returns the role named s, or an error listing the roles.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !r.Valid() {
		return "", fmt.Errorf("tlsx: role %q: want one of %s: %w", s, rolesList(), ErrUnknownRole)
	}
	return r, nil
}

func rolesList() string {
	names := make([]string, len(Roles))
	for i, r := range Roles {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}

// Identity is who a peer is: its certificate's subject common name, role
// (first organizational unit) and site (first organization; may be empty
// for clients).
type Identity struct {
	Name string
	Role Role
	Site string
}

// maxNameBytes bounds names and sites (the limit of a common name).
const maxNameBytes = 64

// Validate checks id: a name (1 to 64 bytes of [A-Za-z0-9_.@-], not
// starting with '.', '-' or '@', so it is a safe file name too), a valid
// role, a site of the same alphabet or none, and a site for every node and
// relay. Errors wrap ErrBadIdentity or ErrUnknownRole.
func (id Identity) Validate() error {
	if err := checkName("name", id.Name); err != nil {
		return err
	}
	if !id.Role.Valid() {
		return fmt.Errorf("tlsx: %s has role %q, want one of %s: %w", id.Name, id.Role, rolesList(), ErrUnknownRole)
	}
	if id.Site != "" {
		if err := checkName("site", id.Site); err != nil {
			return err
		}
	} else if id.Role == RoleNode || id.Role == RoleRelay {
		return fmt.Errorf("tlsx: %s has role %s but no site: %w", id.Name, id.Role, ErrBadIdentity)
	}
	return nil
}

func checkName(what, s string) error {
	if s == "" {
		return fmt.Errorf("tlsx: %s is empty: %w", what, ErrBadIdentity)
	}
	if len(s) > maxNameBytes {
		return fmt.Errorf("tlsx: %s %q is %d bytes, limit is %d: %w", what, s, len(s), maxNameBytes, ErrBadIdentity)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '@'
		if i == 0 && (c == '.' || c == '-' || c == '@') {
			ok = false
		}
		if !ok {
			return fmt.Errorf("tlsx: %s %q: byte %d is not allowed (want [A-Za-z0-9_.@-], not first '.', '-' or '@'): %w", what, s, i, ErrBadIdentity)
		}
	}
	return nil
}

// String is "name (role)" or "name (role, site)".
func (id Identity) String() string {
	if id.Site == "" {
		return fmt.Sprintf("%s (%s)", id.Name, id.Role)
	}
	return fmt.Sprintf("%s (%s, %s)", id.Name, id.Role, id.Site)
}

// IdentityFromCert reads the identity in cert's subject and validates it.
// It does not verify cert: pass only a certificate of a verified chain.
func IdentityFromCert(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, fmt.Errorf("tlsx: no certificate: %w", ErrBadIdentity)
	}
	id := Identity{Name: cert.Subject.CommonName}
	if len(cert.Subject.OrganizationalUnit) == 0 || cert.Subject.OrganizationalUnit[0] == "" {
		return Identity{}, fmt.Errorf("tlsx: certificate %q (serial %x) has no role in its subject's OU (want one of %s): %w",
			id.Name, cert.SerialNumber, rolesList(), ErrNoRole)
	}
	id.Role = Role(cert.Subject.OrganizationalUnit[0])
	if len(cert.Subject.Organization) > 0 {
		id.Site = cert.Subject.Organization[0]
	}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("tlsx: certificate %q (serial %x): %w", id.Name, cert.SerialNumber, err)
	}
	return id, nil
}

// PeerIdentity returns the identity of the verified client certificate of
// a gRPC call, as a server sees it (ctx is the call's context). It is
// false when the call came without a certificate (a token client, or no
// TLS), or the certificate names no valid identity.
//
// Only a server has the verified chain it reads: on a client's side the
// server's chain is verified by ClientConfig, and grpc does not see it.
func PeerIdentity(ctx context.Context) (Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Identity{}, false
	}
	return StateIdentity(info.State)
}

// StateIdentity is the identity of the peer of a verified connection: the
// leaf of its first verified chain (a NATS server's client, say).
func StateIdentity(cs tls.ConnectionState) (Identity, bool) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, false
	}
	id, err := IdentityFromCert(cs.VerifiedChains[0][0])
	return id, err == nil
}

// Expect is what a connection requires of its peer's certificate, beyond a
// chain to the CA (and, for a server, the host name dialled). Its zero
// value requires nothing more. A server whose peer presents no
// certificate is governed by its tls.ClientAuthType alone.
//
// Raft's transport expects Expect{Roles: []Role{RoleNode}, Site: site} on
// both ends, so that no client certificate, whatever its SANs, can pose
// as a node, and no node of another site can join.
type Expect struct {
	// Roles: the peer's role must be one of these. None: any valid role.
	Roles []Role
	// Site: the peer's site must be this. "": any site.
	Site string
}

func (e Expect) zero() bool { return len(e.Roles) == 0 && e.Site == "" }

// check checks the identity in cert, the leaf of a verified chain.
func (e Expect) check(cert *x509.Certificate) error {
	id, err := IdentityFromCert(cert)
	if err != nil {
		return err
	}
	if len(e.Roles) > 0 && !slices.Contains(e.Roles, id.Role) {
		return fmt.Errorf("tlsx: peer %s: role %s, want %v: %w", id.Name, id.Role, e.Roles, ErrUnexpectedPeer)
	}
	if e.Site != "" && id.Site != e.Site {
		return fmt.Errorf("tlsx: peer %s: site %q, want %q: %w", id.Name, id.Site, e.Site, ErrUnexpectedPeer)
	}
	return nil
}
