package admin

import (
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// TestSettingsView: the status page's settings table says what is in force,
// "off" for what is off, for the keys of [limits], [user_limits] and
// [sessions] that change who is refused.
func TestSettingsView(t *testing.T) {
	base := Info{MaxConns: 100, MaxConnsPerIP: 10, LoginTimeout: 30 * time.Second, IdleTimeout: 10 * time.Minute,
		Limits: limiter.Config{Failures: 5, Window: 10 * time.Minute, BanTime: time.Hour, BanFactor: 2,
			MaxBanTime: 168 * time.Hour, IPv4Prefix: 32, IPv6Prefix: 64, MaxLoginWaiters: 32}}
	on := base
	on.Limits.WidenIPv6Prefix, on.Limits.WidenIPv4Prefix = 48, 24
	on.Users.TrapUsernames = []string{"root", "oracle"}
	on.ConnRate, on.ConnBurst = 5, 20
	on.NoAuth = limiter.NoAuthConfig{Penalty: 30 * time.Second, After: 3, Factor: 2, MaxPenalty: 10 * time.Minute}
	on.EndSessionsOnBan = "all-now"
	tests := []struct {
		name string
		info Info
		want map[string]string
	}{
		{"off", base, map[string]string{
			"bans widen":             "off",
			"trap usernames":         "none",
			"connection rate":        "off",
			"no-auth penalty":        "off",
			"a ban ends sessions":    "those not logged in",
			"logins waiting per key": "32",
		}},
		{"on", on, map[string]string{
			"bans widen":          "to the IPv4 /24, IPv6 /48 once 3 keys in it are banned within 10m",
			"trap usernames":      "2 name(s): a guess for one bans the key at once",
			"connection rate":     "5 a second per key, bursts of 20",
			"no-auth penalty":     "30s after 3 connections without a login attempt, × 2 per repeat, up to 10m",
			"a ban ends sessions": "all, at once",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]string{}
			for _, s := range settingsView(tt.info) {
				got[s.Name] = s.Value
			}
			for name, want := range tt.want {
				if got[name] != want {
					t.Errorf("%s: %q; want %q", name, got[name], want)
				}
			}
		})
	}
}
