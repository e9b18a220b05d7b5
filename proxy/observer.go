package proxy

import "time"

// Observer receives the proxy's events, e.g. to count them as metrics. Its
// methods are called from many goroutines at once and on hot paths: they
// must be safe for concurrent use and fast (no I/O). The zero Server uses a
// no-op Observer.
type Observer interface {
	SessionStart()                          // a session was admitted and its backend dialed
	SessionEnd()                            // … and has ended
	Reject(reason string)                   // a connection, command or data connection was refused; reason as logged
	Login(ok bool)                          // a login succeeded, or an attempt failed (each failure once)
	Ban()                                   // a session of this proxy caused a ban
	Bytes(upload bool, n int64)             // data-connection bytes relayed, or carried by the kernel (at its transfer's end), client→daemon when upload
	DataConn(kernel bool)                   // a data connection began: relayed, or carried by the kernel (data_path "nftables")
	BackendDial(d time.Duration, err error) // one dial of the backend's control port
	Panic()                                 // a panic was recovered in a connection's goroutine (that connection ended)
}

type nopObserver struct{}

func (nopObserver) SessionStart()                    {}
func (nopObserver) SessionEnd()                      {}
func (nopObserver) Reject(string)                    {}
func (nopObserver) Login(bool)                       {}
func (nopObserver) Ban()                             {}
func (nopObserver) Bytes(bool, int64)                {}
func (nopObserver) DataConn(bool)                    {}
func (nopObserver) BackendDial(time.Duration, error) {}
func (nopObserver) Panic()                           {}
