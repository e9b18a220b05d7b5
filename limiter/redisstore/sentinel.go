package redisstore

import (
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// baseOptions reads opt's URL into client options: the server, user,
// password, db and TLS of a plain Redis; with Sentinel (SentinelAddrs),
// only the user, password, db and TLS count (the master's address comes
// from the sentinels), and URL may be "" (db 0, no password). Password,
// when set, replaces the URL's.
func baseOptions(opt Options) (*redis.Options, error) {
	u := opt.URL
	if u == "" {
		if len(opt.SentinelAddrs) == 0 {
			return nil, errors.New("redisstore: url is required (or sentinel_addrs)")
		}
		u = "redis://sentinel-master/0"
	}
	o, err := redis.ParseURL(u)
	if err != nil {
		return nil, fmt.Errorf("redisstore: url: %w", err)
	}
	if len(opt.SentinelAddrs) > 0 && opt.SentinelMaster == "" {
		return nil, errors.New("redisstore: sentinel_master is required with sentinel_addrs")
	}
	if opt.Password != "" {
		o.Password = opt.Password
	}
	return o, nil
}

// newClient returns the client of o: a plain one, or with SentinelAddrs a
// failover client that asks the sentinels for SentinelMaster's address,
// follows a failover (+switch-master: connections to the old master are
// closed, the next call and the subscription reconnect to the new one) and
// only ever talks to the master. The options of o (timeouts, no retries,
// client name, TLS) apply to the master's connections; the sentinels are
// dialed with the same timeouts.
func newClient(o *redis.Options, opt Options) *redis.Client {
	if len(opt.SentinelAddrs) == 0 {
		return redis.NewClient(o)
	}
	return redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            opt.SentinelMaster,
		SentinelAddrs:         opt.SentinelAddrs,
		SentinelPassword:      opt.SentinelPassword,
		ClientName:            o.ClientName,
		Username:              o.Username,
		Password:              o.Password,
		DB:                    o.DB,
		MaxRetries:            o.MaxRetries,
		DialTimeout:           o.DialTimeout,
		DialerRetries:         o.DialerRetries,
		ReadTimeout:           o.ReadTimeout,
		WriteTimeout:          o.WriteTimeout,
		PoolTimeout:           o.PoolTimeout,
		ContextTimeoutEnabled: o.ContextTimeoutEnabled,
		TLSConfig:             o.TLSConfig,
	})
}
