package limiter

import (
	"math"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// TestSectionDefaults: the file's defaults are valid and give the Config
// and UserConfig they stand for.
func TestSectionDefaults(t *testing.T) {
	var p conf.Problems
	cfg := DefaultLimits().Settings(&p, true)
	ucfg := DefaultUserLimits().Settings(&p)
	if !p.OK() {
		t.Fatalf("defaults have problems: %v", p.List)
	}
	want := Config{Failures: 5, Window: 10 * time.Minute, BanTime: time.Hour, BanFactor: 2, MaxBanTime: 168 * time.Hour,
		IPv4Prefix: 32, IPv6Prefix: 64, MaxTracked: 1_000_000, FailClosed: true,
		FailureDelay: time.Second, MaxFailureDelay: 16 * time.Second, CountUserRejects: true, MaxLoginWaiters: 32,
		WidenIPv6Prefix: 48, WidenAfter: 3}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Config = %+v\nwant     %+v", cfg, want)
	}
	uwant := UserConfig{Failures: 20, Window: time.Hour, KnownGoodTTL: 720 * time.Hour, MaxNamesPerKey: 10, MaxTracked: 100_000,
		TrapUsernames: []string{}}
	if !reflect.DeepEqual(ucfg, uwant) {
		t.Errorf("UserConfig = %+v, want %+v", ucfg, uwant)
	}
	l := DefaultLimits()
	l.Allow = []string{"10.0.0.0/8", "192.0.2.1", "::ffff:198.51.100.0/120"}
	l.SuccessResets = true
	cfg = l.Settings(&p, false)
	wantAllow := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("198.51.100.0/24")}
	if !p.OK() || !reflect.DeepEqual(cfg.Allow, wantAllow) || !cfg.SuccessResets || cfg.FailClosed {
		t.Errorf("Settings = %+v, problems %v", cfg, p.List)
	}
}

// TestSectionProblems: each bad value is one problem, named by its key,
// worded as cmd/ftpguard's config tests expect (their messages are kept).
func TestSectionProblems(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*LimitsConfig, *UserLimitsConfig)
		wants []string // "key: reason" of every problem, in order
	}{
		{"zero failures", func(l *LimitsConfig, _ *UserLimitsConfig) { l.Failures = 0 },
			[]string{"limits.failures: must be ≥ 1, got 0"}},
		{"negative failures", func(l *LimitsConfig, _ *UserLimitsConfig) { l.Failures = -1 },
			[]string{"limits.failures: must be ≥ 1, got -1"}},
		{"huge failures", func(l *LimitsConfig, _ *UserLimitsConfig) { l.Failures = math.MaxInt32 + 1 },
			[]string{"limits.failures: must be ≤ 2147483647"}},
		{"max login waiters", func(l *LimitsConfig, _ *UserLimitsConfig) { l.MaxLoginWaiters = 0 },
			[]string{"limits.max_login_waiters: must be ≥ 1, got 0"}},
		{"window", func(l *LimitsConfig, _ *UserLimitsConfig) { l.Window = -time.Second },
			[]string{`limits.window: must be a positive duration such as "30s", got -1s`}},
		{"ban factor", func(l *LimitsConfig, _ *UserLimitsConfig) { l.BanFactor = 0.5 },
			[]string{"limits.ban_factor: must be ≥ 1, got 0.5"}},
		{"ban factor NaN", func(l *LimitsConfig, _ *UserLimitsConfig) { l.BanFactor = math.NaN() },
			[]string{"limits.ban_factor: must be ≥ 1"}},
		{"ban factor Inf", func(l *LimitsConfig, _ *UserLimitsConfig) { l.BanFactor = math.Inf(1) },
			[]string{"limits.ban_factor: must be finite"}},
		{"max ban below ban", func(l *LimitsConfig, _ *UserLimitsConfig) { l.BanTime, l.MaxBanTime = 2*time.Hour, time.Hour },
			[]string{"limits.max_ban_time: must be ≥ ban_time (2h0m0s), got 1h0m0s"}},
		{"negative ban time", func(l *LimitsConfig, _ *UserLimitsConfig) { l.BanTime = -time.Hour },
			[]string{`limits.ban_time: must be a positive duration such as "30s", got -1h0m0s`}},
		{"prefixes", func(l *LimitsConfig, _ *UserLimitsConfig) { l.IPv4Prefix, l.IPv6Prefix = 0, 129 },
			[]string{"limits.ipv4_prefix: must be 1–32, got 0", "limits.ipv6_prefix: must be 1–128, got 129"}},
		{"allow", func(l *LimitsConfig, _ *UserLimitsConfig) { l.Allow = []string{"10.0.0.0/8", "nope"} },
			[]string{`limits.allow: "nope" is not an IP address or CIDR`}},
		{"max tracked", func(l *LimitsConfig, _ *UserLimitsConfig) { l.MaxTracked = 0 },
			[]string{"limits.max_tracked: must be ≥ 1, got 0"}},
		{"failure delay", func(l *LimitsConfig, _ *UserLimitsConfig) { l.FailureDelay = -time.Second },
			[]string{"limits.failure_delay: must be ≥ 0 (0 turns the tarpit off), got -1s"}},
		{"max failure delay", func(l *LimitsConfig, _ *UserLimitsConfig) { l.MaxFailureDelay = 500 * time.Millisecond },
			[]string{"limits.max_failure_delay: must be ≥ failure_delay (1s), got 500ms"}},
		{"user failures", func(_ *LimitsConfig, u *UserLimitsConfig) { u.Failures = -1 },
			[]string{"user_limits.failures: must be ≥ 0, got -1"}},
		{"user window", func(_ *LimitsConfig, u *UserLimitsConfig) { u.Window = 0 },
			[]string{`user_limits.window: must be a positive duration such as "30s", got 0s`}},
		{"user ttl", func(_ *LimitsConfig, u *UserLimitsConfig) { u.KnownGoodTTL = -time.Hour },
			[]string{`user_limits.known_good_ttl: must be a positive duration such as "30s", got -1h0m0s`}},
		{"names per key", func(_ *LimitsConfig, u *UserLimitsConfig) { u.MaxNamesPerKey = 1001 },
			[]string{"user_limits.max_names_per_key: must be ≤ 1000"}},
		{"negative names per key", func(_ *LimitsConfig, u *UserLimitsConfig) { u.MaxNamesPerKey = -1 },
			[]string{"user_limits.max_names_per_key: must be ≥ 0, got -1"}},
		{"user max tracked", func(_ *LimitsConfig, u *UserLimitsConfig) { u.MaxTracked = 0 },
			[]string{"user_limits.max_tracked: must be ≥ 1, got 0"}},
		{"known-good prefixes", func(_ *LimitsConfig, u *UserLimitsConfig) { u.KnownGoodIPv4Prefix, u.KnownGoodIPv6Prefix = 33, -1 },
			[]string{"user_limits.known_good_ipv4_prefix: must be 0–32, got 33", "user_limits.known_good_ipv6_prefix: must be 0–128, got -1"}},
		{"widen prefixes", func(l *LimitsConfig, _ *UserLimitsConfig) { l.WidenIPv6Prefix, l.WidenIPv4Prefix = 64, 33 },
			[]string{"limits.widen_ipv6_prefix: must be 0 (off) or shorter than ipv6_prefix (64)",
				"limits.widen_ipv4_prefix: must be 0 (off) or shorter than ipv4_prefix (32)"}},
		{"widen after", func(l *LimitsConfig, _ *UserLimitsConfig) { l.WidenAfter = 1 },
			[]string{"limits.widen_after: must be in 2..1000"}},
		{"widen after zero", func(l *LimitsConfig, _ *UserLimitsConfig) { l.WidenAfter = 0 },
			[]string{"limits.widen_after: must be in 2..1000, got 0"}},
		{"trap name empty", func(_ *LimitsConfig, u *UserLimitsConfig) { u.TrapUsernames = []string{"root", ""} },
			[]string{`user_limits.trap_usernames: entry 2 ("") is empty`}},
		{"trap name control", func(_ *LimitsConfig, u *UserLimitsConfig) { u.TrapUsernames = []string{"a\x01"} },
			[]string{`user_limits.trap_usernames: entry 1 ("a\x01") has control characters`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, u := DefaultLimits(), DefaultUserLimits()
			tt.edit(&l, &u)
			var p conf.Problems
			l.Settings(&p, false)
			u.Settings(&p)
			var got []string
			for _, q := range p.List {
				got = append(got, q.Error())
			}
			if !reflect.DeepEqual(got, tt.wants) {
				t.Fatalf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tt.wants, "\n  "))
			}
		})
	}
}
