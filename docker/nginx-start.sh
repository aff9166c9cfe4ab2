#!/bin/sh
# Start nginx (service `lb`) with the container's own DNS server as its resolver: Docker's is
# 127.0.0.11, Podman's the network's gateway address; /etc/resolv.conf names it either way.
set -eu
resolver=$(awk '/^nameserver/ { print $2; exit }' /etc/resolv.conf)
case "$resolver" in *:*) resolver="[$resolver]" ;; esac  # an IPv6 address
sed "s/RESOLVER_ADDRESS/$resolver/" /etc/nginx/rr/nginx.conf > /tmp/nginx.conf
exec nginx -c /tmp/nginx.conf -g 'daemon off;'
