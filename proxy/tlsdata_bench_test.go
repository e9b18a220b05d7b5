package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
)

// BenchmarkTLSLeg: one way of a relay with a TLS leg, as a PROT P RETR
// runs it (copyBuffered over a recordBatcher), between loopback sockets:
// the plain side is fed by a writer of its own, the TLS side's peer
// drains the ciphertext without decrypting it (its cost is the client's,
// not the proxy's). b.SetBytes reports the relay's throughput; run with
// -cpuprofile to see where a GiB goes.
func BenchmarkTLSLeg(b *testing.B) {
	conf := testTLSConfig(&testing.T{})
	conf.DynamicRecordSizingDisabled = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	pair := func() (net.Conn, net.Conn) {
		d, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		a, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		return d, a
	}
	backend, plainIn := pair()   // the daemon writes backend, the relay reads plainIn
	client, clientSide := pair() // the relay writes clientSide (TLS), the client reads client
	defer backend.Close()
	defer plainIn.Close()
	defer client.Close()
	tc := tls.Server(&recordBatcher{Conn: clientSide}, conf)
	defer tc.Close()
	hs := make(chan error, 1)
	go func() {
		c := tls.Client(client, &tls.Config{InsecureSkipVerify: true})
		hs <- c.Handshake()
		io.Copy(io.Discard, client) // raw ciphertext, not decrypted
	}()
	if err := tc.Handshake(); err != nil {
		b.Fatal(err)
	}
	if err := <-hs; err != nil {
		b.Fatal(err)
	}
	const chunk = 1 << 20
	go func() {
		p := make([]byte, chunk)
		for range b.N {
			if _, err := backend.Write(p); err != nil {
				return
			}
		}
		backend.(*net.TCPConn).CloseWrite()
	}()
	buf := make([]byte, relayBuf)
	b.SetBytes(chunk)
	b.ResetTimer()
	var total int64
	for {
		n, err := copyBuffered(tc, plainIn, buf)
		total += n
		if err != nil {
			if err != io.EOF {
				b.Fatal(err)
			}
			break
		}
	}
	if total != int64(b.N)*chunk {
		b.Fatalf("relayed %d bytes; want %d", total, int64(b.N)*chunk)
	}
}
