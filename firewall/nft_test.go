package firewall

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/nftset"
)

// TestNftObserve: kind "nftables" in observe mode touches no table (no
// netlink call is made: this runs without CAP_NET_ADMIN); it logs the sync
// at start and each change, and a reload cannot switch the Runner to
// commands. The kernel side is tested in integration (TestNftables).
func TestNftObserve(t *testing.T) {
	nft := nftset.DefaultConfig()
	nft.Ports = []string{"21"}
	initial := []limiter.Ban{{Key: netip.MustParsePrefix("192.0.2.1/32"), Until: time.Now().Add(time.Hour)}}
	fw, logs := runFirewall(t, Settings{Timeout: time.Second, UnbanExpired: true, Nft: &nft}, true, initial)
	waitUntil(t, "the sync logged", func() bool { return strings.Contains(logs.String(), "observe: would sync the nftables table") })
	fw.SetConfig(Settings{Ban: []string{"/bin/false"}, Timeout: time.Second}) // kind takes effect on restart
	key := netip.MustParsePrefix("198.51.100.7/32")
	fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: key, Until: time.Now().Add(time.Hour)}})
	fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: key}, Lifted: true})
	waitUntil(t, "both changes logged", func() bool {
		return strings.Count(logs.String(), "observe: would change the nftables table") == 2
	})
	if s := fw.stats(); s.ban.failed != 0 || s.unban.failed != 0 || s.ban.ok != 0 {
		t.Errorf("observe mode counted results: %+v", s)
	}
	if strings.Contains(logs.String(), "/bin/false") {
		t.Errorf("a reload switched kind nftables to commands:\n%s", logs.String())
	}
}
