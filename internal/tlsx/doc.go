// Package tlsx holds Aviary's mutual TLS: the identities and roles that
// certificates carry, the creation of a deployment's CA and certificates,
// and the TLS configurations of every link, whose material is re-read from
// disk without a restart.
//
// # Identities
//
// A certificate's subject names its holder: the common name is the
// identity's name ("node-0", "relay-site-a", "alice"), the first
// organizational unit its Role, and the first organization its site (none
// for most clients). IdentityFromCert reads it; PeerIdentity reads it
// from a gRPC call's verified client certificate. Role.Allows orders read
// < write < admin < node and keeps relay apart (see Role).
//
// # Certificates
//
// NewCA makes a deployment's CA (ECDSA P-256), Issue a certificate signed
// by it for an identity and its host names and addresses, usable both to
// serve and to connect; WriteKeyPair writes NAME.crt (0644) and NAME.key
// (0600) atomically. ops certs init and ops certs issue wrap them.
//
// # Configurations
//
// Load returns a Source of a CA bundle and, usually, a key pair. Its
// handshakes take the files' current content, checked at most once a
// second, so replacing the files (a renewed certificate, a CA bundle
// holding the old and the new CA during a rotation) takes effect on the
// next connection. Every configuration is TLS 1.3 only.
//
// A gRPC server requiring client certificates:
//
//	creds := credentials.NewTLS(src.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{}))
//	srv := grpc.NewServer(grpc.Creds(creds), ...)
//
// and its interceptor authorizes with tlsx.PeerIdentity(ctx) (use
// tls.VerifyClientCertIfGiven where clients may present a token instead).
// A gRPC client of a node at addr (one configuration per address):
//
//	creds := credentials.NewTLS(src.ClientConfig(tlsx.ServerNameOf(addr), tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode}}))
//	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), ...)
//
// Raft's stream layer wraps its listener and dials, both ends expecting a
// node of the same site:
//
//	want := tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode}, Site: site}
//	l = tls.NewListener(l, src.ServerConfig(tls.RequireAndVerifyClientCert, want))
//	c := tls.Client(rawConn, src.ClientConfig(tlsx.ServerNameOf(addr), want))
//	err := c.HandshakeContext(ctx)
//
// An embedded NATS server takes TLS: true, TLSVerify: true and TLSConfig:
// src.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{Roles:
// []tlsx.Role{tlsx.RoleNode, tlsx.RoleRelay}}); its clients connect with
// nats.Secure(src.ClientConfig(tlsx.ServerNameOf(natsURL), tlsx.Expect{})).
//
// Clients verify servers in VerifyConnection rather than with RootCAs, so
// that a reloaded CA applies to reconnections too (see
// Source.ClientConfig).
package tlsx
