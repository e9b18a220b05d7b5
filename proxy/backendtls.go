package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// Explicit FTPS to the daemon (Config.BackendTLS): the proxy is the TLS
// client on the control connection and on every data connection, whatever
// the client speaks. Each session has its own session cache, so that data
// connections resume the control connection's TLS session (vsftpd's
// require_ssl_reuse insists on it).

// backendTLS opens TLS on a fresh backend control connection: it reads the
// greeting (returned, to be relayed to the client), then AUTH TLS, the
// handshake, PBSZ 0 and PROT P, all within dial_timeout.
func backendTLS(ctx context.Context, bc net.Conn, cfg *Config, tcfg *tls.Config) (net.Conn, ftpproto.Reply, error) {
	bc.SetDeadline(time.Now().Add(cfg.DialTimeout))
	defer bc.SetDeadline(time.Time{})
	rr := ftpproto.NewReplyReader(bc, maxReplyLine, cfg.MaxReply)
	var greeting ftpproto.Reply
	for {
		r, err := rr.ReadReply()
		if err != nil {
			return nil, greeting, fmt.Errorf("greeting: %w", err)
		}
		if r.Code >= 200 {
			greeting = r
			break
		}
	}
	if greeting.Code != 220 {
		return nil, greeting, fmt.Errorf("greeting %d %q", greeting.Code, greeting.Text())
	}
	cmd := func(c net.Conn, rr *ftpproto.ReplyReader, line string, want int) error {
		if _, err := c.Write([]byte(line + "\r\n")); err != nil {
			return err
		}
		r, err := rr.ReadReply()
		if err != nil {
			return fmt.Errorf("%s: %w", line, err)
		}
		if r.Code != want {
			return fmt.Errorf("%s: %d %q", line, r.Code, r.Text())
		}
		return nil
	}
	if err := cmd(bc, rr, "AUTH TLS", 234); err != nil {
		return nil, greeting, err
	}
	tc := tls.Client(bc, tcfg)
	hctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, greeting, fmt.Errorf("TLS handshake: %w", err)
	}
	rr = ftpproto.NewReplyReader(tc, maxReplyLine, cfg.MaxReply)
	for _, c := range []struct {
		line string
		want int
	}{{"PBSZ 0", 200}, {"PROT P", 200}} {
		if err := cmd(tc, rr, c.line, c.want); err != nil {
			return nil, greeting, err
		}
	}
	return tc, greeting, nil
}

// sessionBackendTLS returns a per-session copy of the backend TLS config
// with its own session cache.
func sessionBackendTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	c = c.Clone()
	c.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	return c
}

// secureBackendData wraps a data connection with the daemon in TLS when
// the control connection is; it resumes the control connection's session.
func (s *session) secureBackendData(c net.Conn) (net.Conn, error) {
	if s.btls == nil {
		return c, nil
	}
	tc := tls.Client(&recordBatcher{Conn: c}, s.btls)
	ctx, cancel := context.WithTimeout(s.srv.ctx, s.srv.config().DataTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return tc, nil
}
