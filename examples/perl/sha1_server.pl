#!/usr/bin/env perl
# A plain REP server in Perl (ZMQ::FFI, Debian's libzmq-ffi-perl): answers each request
# with the SHA-1 (hex) of what it received. By default it connects to the backend of a
# queue (`scale0 queue`, tcp://localhost:5560); with --bind it listens itself.
#
#   perl sha1_server.pl [--connect tcp://localhost:5560 | --bind tcp://*:5555] [--delay-ms N]
use strict;
use warnings;
use Digest::SHA qw(sha1_hex);
use Getopt::Long;
use Time::HiRes qw(usleep);
use ZMQ::FFI qw(ZMQ_REP);
use ZMQ::FFI::Constants qw(ZMQ_LAST_ENDPOINT);

my ($connect, $bind, $delay_ms) = ('tcp://localhost:5560', undef, 0);
GetOptions('connect=s' => \$connect, 'bind=s' => \$bind, 'delay-ms=i' => \$delay_ms)
    or die "usage: $0 [--connect ENDPOINT | --bind ENDPOINT] [--delay-ms N]\n";
$| = 1;

my $ctx = ZMQ::FFI->new();
my $sock = $ctx->socket(ZMQ_REP);
$sock->set_linger(0);
if (defined $bind) { $sock->bind($bind) } else { $sock->connect($connect) }
my $where = defined $bind ? $sock->get(ZMQ_LAST_ENDPOINT, 'string') : $connect;
print "perl sha1 server $$ ready $where\n";
while (1) {
    my $request = join '', $sock->recv_multipart();
    print "perl $$ received ", length($request), " bytes\n";
    usleep($delay_ms * 1000) if $delay_ms;
    my $digest = sha1_hex($request);
    $sock->send($digest);
    print "perl $$ served $digest\n";
}
