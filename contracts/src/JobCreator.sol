// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {JobMarket} from "./JobMarket.sol";
import {ILilypadJobClient} from "./ILilypadJobClient.sol";

/// @title JobCreator
/// @notice Lets a contract ask for a job: `runJob` takes the job's cost from the caller and emits
///         `JobRequested`; the off-chain bridge turns it into a JobOffer for this contract, and once
///         the deal's result is in, `deliverResult` accepts it in JobMarket and calls the client back.
///
/// Each job's funds are its own, although they share this contract's one JobMarket balance:
///   - a JobOffer for job J must carry nonce J, and this contract's ERC-1271 check validates only
///     such offers, for an open job, at most at the job's funds; the market uses a nonce once, so a
///     job makes at most one deal and no deal can spend another job's funds;
///   - the calls that end a job take the JobOffer and the Deal, check that the deal is job J's, and
///     read from the market how the deal ended (`JobMarket.dealState` keeps the rare endings), so
///     the payee gets back exactly what this job's funds came to.
/// Delivery is checked too: the CID handed to the client is the one whose tag the market holds.
/// Whoever the bridge is, a client's job ends in one of three ways, each with an event: delivered
/// (`JobDelivered`, with the callback's outcome), closed after its deal ended without a deliverable
/// result (`JobClosed`), or cancelled before any deal (`JobCancelled`). A submitted result is the
/// bridge's to judge (accept or audit) for the first `auditWindow` seconds; after that anyone may
/// deliver it, so a stopped bridge cannot keep a client from its result.
contract JobCreator is Ownable2Step, IERC1271 {
    using SafeERC20 for IERC20;

    enum JobState {
        None,
        Open,
        Delivered,
        Closed,
        Cancelled
    }

    struct Job {
        address client; // receives submitResults
        uint96 amount; // what the client paid; held in this contract's JobMarket balance
        address payee; // receives what is left of the job's funds (refund or change)
        JobState state;
        bool challenged; // the bridge audited the result (the mediation fee came from the job's funds)
    }

    /// @notice Gas the client's `submitResults` is called with. A callback that reverts or runs out
    ///         is recorded (`JobDelivered.callbackOk` false) and not retried: the job still ends.
    uint256 public constant CALLBACK_GAS = 500_000;

    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    IERC20 public immutable token;
    JobMarket public immutable market;
    /// @dev The market's EIP-712 domain separator: offers for this contract are signed under it.
    bytes32 private immutable _marketDomain;
    bytes32 private immutable _jobOfferTypehash;
    /// @notice Seconds after a result's submission during which only the bridge may deliver it
    ///         (half the market's challenge window: the bridge decides on an audit at once).
    uint256 public immutable auditWindow;
    uint256 private immutable _challengeWindow;
    address public bridge;
    uint96 public jobCost;
    uint256 public jobCount;
    mapping(uint256 jobId => Job) public jobs;

    event JobRequested(
        uint256 indexed jobId, address indexed client, address indexed payee, string module, string[] inputs, uint256 amount
    );
    event JobDelivered(uint256 indexed jobId, bytes32 indexed dealId, bytes resultCid, bool callbackOk);
    event JobClosed(uint256 indexed jobId, bytes32 indexed dealId, uint256 refund);
    event JobCancelled(uint256 indexed jobId, uint256 refund);
    event ResultAudited(uint256 indexed jobId, bytes32 indexed dealId);
    event BridgeSet(address indexed bridge);
    event JobCostSet(uint96 jobCost);

    error NotBridge(address caller);
    error NotAllowed(address caller);
    error JobNotOpen(uint256 jobId);
    error NotTheJobsDeal(uint256 jobId);
    error ResultMismatch(bytes32 dealId);
    error NothingToDeliver(bytes32 dealId, JobMarket.State state);
    error DealNotEnded(bytes32 dealId, JobMarket.State state);
    error CannotAffordAudit(uint256 needed, uint256 left);
    error CallbackGasTooLow(uint256 gasLeft, uint256 needed);
    error UnknownDeal(bytes32 dealId);
    error DeliverInstead(bytes32 dealId, JobMarket.State state);
    error ZeroPayee();

    constructor(address owner_, JobMarket market_, address bridge_, uint96 jobCost_) Ownable(owner_) {
        market = market_;
        token = market_.token();
        bridge = bridge_;
        jobCost = jobCost_;
        _jobOfferTypehash = market_.JOB_OFFER_TYPEHASH();
        _challengeWindow = market_.challengeWindow();
        auditWindow = _challengeWindow / 2;
        _marketDomain = keccak256(
            abi.encode(_DOMAIN_TYPEHASH, keccak256("LilypadJobMarket"), keccak256("1"), block.chainid, address(market_))
        );
        token.forceApprove(address(market_), type(uint256).max);
    }

    modifier onlyBridge() {
        if (msg.sender != bridge) revert NotBridge(msg.sender);
        _;
    }

    function setBridge(address bridge_) external onlyOwner {
        bridge = bridge_;
        emit BridgeSet(bridge_);
    }

    function setJobCost(uint96 jobCost_) external onlyOwner {
        jobCost = jobCost_;
        emit JobCostSet(jobCost_);
    }

    /// @notice Ask for `module` to run with `inputs` ("Key=Value" tunables). The caller pays
    ///         `jobCost` (approve this contract first) and receives `submitResults`; `payee` gets
    ///         whatever of the cost a cheaper deal or a failed job leaves.
    function runJob(string calldata module, string[] calldata inputs, address payee) external returns (uint256 jobId) {
        // A zero payee could never be paid: the job could then never end.
        if (payee == address(0)) revert ZeroPayee();
        uint96 amount = jobCost;
        jobId = ++jobCount;
        jobs[jobId] = Job(msg.sender, amount, payee, JobState.Open, false);
        emit JobRequested(jobId, msg.sender, payee, module, inputs, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
        market.deposit(amount);
    }

    /// @notice Hand the deal's result to the client and return the job's change to the payee.
    ///         A result that is only submitted is accepted in JobMarket first, which is the bridge's
    ///         judgement to make during the `auditWindow`; after it anyone may deliver. After a
    ///         mediation anyone may deliver: `Upheld` delivers the provider's result, `Refunded` the
    ///         mediator's (the correct one). The CID must be the one whose tag the market keeps.
    function deliverResult(
        uint256 jobId,
        JobMarket.JobOffer calldata offer,
        JobMarket.Deal calldata deal,
        bytes calldata resultCid
    ) external {
        Job memory job = _open(jobId);
        bytes32 dealId = _dealOf(jobId, offer, deal);
        (JobMarket.State state, uint48 deadline, bytes24 tag) = market.dealState(dealId);
        if (tag == bytes24(0) || tag != bytes24(keccak256(resultCid))) revert ResultMismatch(dealId);
        if (state == JobMarket.State.Submitted) {
            // `deadline` ends the challenge window; the bridge's audit window is its first half.
            if (msg.sender != bridge && block.timestamp + _challengeWindow < deadline + auditWindow) {
                revert NotBridge(msg.sender);
            }
            market.acceptResult(deal);
        } else if (state != JobMarket.State.Upheld && state != JobMarket.State.Refunded) {
            revert NothingToDeliver(dealId, state);
        }
        jobs[jobId].state = JobState.Delivered;
        _pay(job.payee, _left(job, deal, state));
        bool ok = _callBack(job.client, jobId, dealId, resultCid);
        emit JobDelivered(jobId, dealId, resultCid, ok);
    }

    /// @notice Bridge only: audit the submitted result (challenge it in JobMarket; the mediation fee
    ///         comes out of the job's own funds, so the offer's price must leave room for it).
    function challengeResult(uint256 jobId, JobMarket.JobOffer calldata offer, JobMarket.Deal calldata deal)
        external
        onlyBridge
    {
        Job memory job = _open(jobId);
        bytes32 dealId = _dealOf(jobId, offer, deal);
        uint256 left = job.amount - deal.price;
        if (left < deal.mediationFee) revert CannotAffordAudit(deal.mediationFee, left);
        jobs[jobId].challenged = true;
        market.challengeResult(deal);
        emit ResultAudited(jobId, dealId);
    }

    /// @notice Anyone: end a job whose deal ended with nothing to deliver, and return to the payee
    ///         what the job's funds came to. A deal past its deadline is timed out here first.
    ///         The deal must be in the market: a deal it does not know (never made, or settled to
    ///         the provider and deleted) proves nothing about what the job paid, so it ends nothing.
    function closeJob(uint256 jobId, JobMarket.JobOffer calldata offer, JobMarket.Deal calldata deal) external {
        Job memory job = _open(jobId);
        bytes32 dealId = _dealOf(jobId, offer, deal);
        (JobMarket.State state, uint48 deadline, bytes24 tag) = market.dealState(dealId);
        if (block.timestamp > deadline) {
            if (state == JobMarket.State.Created) market.timeoutResult(deal);
            else if (state == JobMarket.State.Challenged) market.timeoutMediation(deal);
            (state,, tag) = market.dealState(dealId);
        }
        if (state == JobMarket.State.None) revert UnknownDeal(dealId);
        if (
            state == JobMarket.State.Submitted || state == JobMarket.State.Upheld
                || (state == JobMarket.State.Refunded && tag != bytes24(0))
        ) revert DeliverInstead(dealId, state);
        if (state == JobMarket.State.Created || state == JobMarket.State.Challenged) {
            revert DealNotEnded(dealId, state);
        }
        jobs[jobId].state = JobState.Closed;
        uint256 refund = _left(job, deal, state);
        _pay(job.payee, refund);
        emit JobClosed(jobId, dealId, refund);
    }

    /// @notice The bridge, the client or the payee: give up on a job that has no deal. Its offer's
    ///         nonce is revoked in JobMarket first, so no deal can be made from it afterwards (and if
    ///         one was made, this reverts with `NonceUsed`: end the job with `closeJob` instead).
    function cancelJob(uint256 jobId) external {
        Job memory job = _open(jobId);
        if (msg.sender != bridge && msg.sender != job.client && msg.sender != job.payee) {
            revert NotAllowed(msg.sender);
        }
        jobs[jobId].state = JobState.Cancelled;
        market.invalidateNonce(jobId);
        _pay(job.payee, job.amount);
        emit JobCancelled(jobId, job.amount);
    }

    /// @notice ERC-1271: valid for a JobOffer of this contract signed by the bridge, for an open job
    ///         whose id is the offer's nonce, at a maximum price within the job's funds. The signature
    ///         is `abi.encode(offer, bridgeSignature)`, so the offer itself is checked, not only its
    ///         hash.
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        (JobMarket.JobOffer memory offer, bytes memory bridgeSig) = abi.decode(signature, (JobMarket.JobOffer, bytes));
        Job memory job = jobs[offer.nonce];
        bool valid = offer.jobCreator == address(this) && job.state == JobState.Open && offer.maxPrice <= job.amount
            && _digest(offer) == hash;
        if (valid) {
            (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, bridgeSig);
            if (err == ECDSA.RecoverError.NoError && recovered == bridge) return IERC1271.isValidSignature.selector;
        }
        return bytes4(0xffffffff);
    }

    /// @notice The EIP-712 struct hash of a JobOffer, as JobMarket records it in a Deal.
    function hashJobOffer(JobMarket.JobOffer memory o) public view returns (bytes32) {
        return keccak256(
            abi.encode(
                _jobOfferTypehash,
                o.jobCreator,
                o.module,
                o.specHash,
                o.machine,
                o.maxPrice,
                o.timeout,
                keccak256(abi.encodePacked(o.mediators)),
                o.expiry,
                o.nonce
            )
        );
    }

    function _digest(JobMarket.JobOffer memory offer) internal view returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", _marketDomain, hashJobOffer(offer)));
    }

    function _open(uint256 jobId) internal view returns (Job memory job) {
        job = jobs[jobId];
        if (job.state != JobState.Open) revert JobNotOpen(jobId);
    }

    /// @dev The deal id, once `offer` is shown to be job `jobId`'s and `deal` to be made from it.
    function _dealOf(uint256 jobId, JobMarket.JobOffer calldata offer, JobMarket.Deal calldata deal)
        internal
        view
        returns (bytes32)
    {
        if (
            offer.nonce != jobId || offer.jobCreator != address(this) || deal.jobCreator != address(this)
                || hashJobOffer(offer) != deal.jobOfferHash
        ) revert NotTheJobsDeal(jobId);
        return keccak256(abi.encode(deal));
    }

    /// @dev What the job's funds come to once its deal ended in `state`: the amount, less the price
    ///      and any mediation fee paid, plus what the market returned.
    function _left(Job memory job, JobMarket.Deal calldata deal, JobMarket.State state)
        internal
        pure
        returns (uint256 left)
    {
        left = job.amount - deal.price;
        if (job.challenged) left -= deal.mediationFee;
        if (state == JobMarket.State.Refunded) left += uint256(deal.price) + deal.collateral;
        else if (state == JobMarket.State.MediationExpired) left += uint256(deal.price) + deal.mediationFee;
    }

    function _pay(address payee, uint256 amount) internal {
        if (amount == 0) return;
        market.withdraw(amount);
        token.safeTransfer(payee, amount);
    }

    /// @dev Calls the client with exactly CALLBACK_GAS (and copies no return data, so a client
    ///      cannot make this call expensive). A transaction with too little gas left for that
    ///      reverts instead: otherwise whoever delivers could starve the callback to make it fail.
    ///      The check sits right before the CALL: the CALL itself costs up to 2,600 (a cold
    ///      account) and EIP-150 keeps 1/64 of the rest, which `needed` covers.
    function _callBack(address client, uint256 jobId, bytes32 dealId, bytes calldata cid) internal returns (bool ok) {
        bytes memory data = abi.encodeCall(ILilypadJobClient.submitResults, (jobId, dealId, cid));
        uint256 callGas = CALLBACK_GAS;
        uint256 needed = CALLBACK_GAS + CALLBACK_GAS / 63 + 5_000;
        uint256 left;
        assembly ("memory-safe") {
            left := gas()
            if iszero(lt(left, needed)) { ok := call(callGas, client, 0, add(data, 32), mload(data), 0, 0) }
        }
        if (left < needed) revert CallbackGasTooLow(left, needed);
    }
}
